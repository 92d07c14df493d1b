"""SOUPTrainer: TRL's GRPOTrainer with relay sampling from a frozen historical copy (arXiv 2601.21476).

Glue only (docs/architecture.md): the math lives in :mod:`trl_soup.core`, relay sampling in :mod:`trl_soup.relay`,
the ``soup/`` metrics in :mod:`trl_soup.metrics`, the records passed between hooks in :mod:`trl_soup.records`, the
checkpoint state in :mod:`trl_soup.state` and the historical copy in :mod:`trl_soup.behavior`.
"""

from __future__ import annotations

import inspect
import os
import time

import torch
from transformers import GenerationConfig
from trl import GRPOTrainer

from . import metrics as soup_metrics
from ._compat import PREFIX_CHECKPOINT_DIR, disable_gradient_checkpointing, generation_budget
from .behavior.prefetch import BehaviorPrefetcher, prefetch_schedule
from .behavior.sources import build_prefix_sources
from .checks import check_trainer_arguments, check_trainer_setup, warn_unscored_rewards
from .config import SOUPConfig
from .core import build_prefix_mask, mixed_old_per_token_logps
from .records import LossCapture, RelayRecord
from .refresh import REFRESH_REASONS, RefreshSchedule
from .relay import relay_generation, restrict_vllm_correction
from .reporting import SOUP_PAPER, describe_local_base_model, drop_empty_metrics, prefix_columns
from .sources import source_names
from .state import SNAPSHOT_DIR, SOUP_STATE_FILE, SOUPState, load_rng_state, save_rng_state
from .truncation import behavior_decode_budget

__all__ = ["SNAPSHOT_DIR", "SOUP_STATE_FILE", "SOUPTrainer"]

# Batch keys that name the writer of each relay row -> the RelayRecord field they come from.
GROUP_FIELDS = {"behavior_member_age": "member_ages", "prefix_source_id": "source_ids"}


class SOUPTrainer(GRPOTrainer):
    """GRPO/DAPO trainer in which most trajectories are written in relay by two policies (SOUP).

    Every ``behavior_refresh_interval`` (T) generation batches (or sooner, by ``behavior_refresh_policy``) the behavior
    copy is refreshed from the learner; that batch is plain on-policy. In the batches that follow, for each sample the
    behavior copy writes a full response, the response is cut by ``prefix_strategy``, and the current policy
    continues from ``[prompt, prefix]`` with the remaining budget ``max_completion_length - len(prefix)``. The loss is
    TRL's with the ratio denominator of paper Eq. 5 (pi_behavior on prefix tokens, pi_old on continuation tokens).

    Hooks overridden, each calling ``super()``:

    - ``_generate_and_score_completions``: refreshes the behavior copy when due, then adds ``prefix_mask`` and
      ``behavior_per_token_logps`` to the batch and makes sure ``old_per_token_logps`` exists on relay batches (TRL
      skips it when generation and optimisation are aligned, which would turn the prefix ratio into 1), unless
      ``old_logps_from_loss_forward`` defers it to the loss forward. With vLLM, sets TRL's importance-sampling ratio
      to exactly 1 on prefix tokens and restricts its ``sampling/`` metrics to the continuation.
    - ``_generate_single_turn``: relay sampling (:func:`trl_soup.relay.relay_generation`) with TRL's own generation
      (transformers or vLLM) for the continuations.
    - ``_calculate_rewards``: warns, naming the reward function, when it scored no completion of a batch.
    - ``_compute_loss``: swaps in the mixed denominator, then logs ``soup/`` statistics split by segment.
    - ``_get_per_token_logps_and_entropies``: records the values of the loss forward for those statistics and, with
      ``old_logps_from_loss_forward``, fills the continuation's pi_old from them.
    - ``get_batch_samples`` (transformers' Trainer): with ``behavior_prefetch > 0``, wraps the epoch iterator in a
      look-ahead so the prompts of the next generation batches can be read early (the batches and their order are
      unchanged); their behavior responses are then sampled in the background (:mod:`trl_soup.behavior.prefetch`).
    - ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: save and restore :class:`trl_soup.state.SOUPState`,
      the truncation RNG and, mid-window, the behavior snapshot.
    - ``_save``: lets the behavior backend remove what is not the trained model (the PEFT behavior adapter).
    - ``train``: closes the prefetcher when training returns or raises (no background thread outlives it).
    - ``log``: leaves out metrics that have only NaN since the last log (no None reaches the loggers).
    - ``create_model_card``: names SOUP and its paper; a local base model is named, not linked to the Hub.

    After each relay batch ``last_relay_record`` holds its :class:`trl_soup.records.RelayRecord` (None after on-policy
    and eval batches).
    """

    _tag_names = ["trl", "grpo", "soup"]
    _name = "SOUP"
    _paper = SOUP_PAPER

    def __init__(self, model, reward_funcs=None, args: SOUPConfig | None = None, *pargs, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = SOUPConfig(f"{model_name.split('/')[-1]}-SOUP")
        if not isinstance(args, SOUPConfig):
            raise TypeError(f"SOUPTrainer needs a SOUPConfig, got {type(args).__name__}.")
        bound = inspect.signature(GRPOTrainer.__init__).bind_partial(None, model, reward_funcs, args, *pargs, **kwargs)
        check_trainer_arguments(args, bound.arguments)  # before the model is loaded
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        check_trainer_setup(self)
        self.generation_batch_index = 0  # generation batches produced so far in training (the refresh counter)
        self._relay_active = False  # True for the duration of one relay generation
        self._relay_rows = None  # the dataset rows of the batch being generated (read by the dataset prefix source)
        self._relay_record: RelayRecord | None = None  # what _generate_single_turn did, read back in the same call
        self._loss_capture: LossCapture | None = None  # set for the duration of one _compute_loss
        self.last_relay_record: RelayRecord | None = None
        self.refresh_schedule = RefreshSchedule()  # when the behavior copy is refreshed (trl_soup.refresh)
        self.prefix_generator = torch.Generator().manual_seed(args.seed + self.accelerator.process_index)
        if self.use_vllm:
            self._set_behavior_generation_settings()
        # T = 1 never produces a relay batch: no behavior copy is built at all.
        relay = args.behavior_refresh_interval > 1
        self.behavior = build_prefix_sources(self) if relay else None  # the behavior copy, pool or prefix sources
        # Batch keys naming each row's writer, and the metric names of their groups (trl_soup.metrics.prefix_group_*)
        self._prefix_groups = {}
        if self.behavior is not None and args.behavior_pool_size > 1:
            self._prefix_groups["behavior_member_age"] = [f"soup/pool/age_{k}" for k in range(args.behavior_pool_size)]
        if self.behavior is not None and len(source_names(args)) > 1:
            self._prefix_groups["prefix_source_id"] = [f"soup/source/{name}" for name in source_names(args)]
        self.behavior_prefetcher = None  # behavior samples of the next relay batches, drawn in the background
        if self.behavior is not None and args.behavior_prefetch > 0:
            self.behavior_prefetcher = BehaviorPrefetcher(
                lambda ids, budget, index: self.behavior.sample(ids, budget, generation_batch_index=index),
                args.behavior_prefetch,
            )

    def _set_behavior_generation_settings(self) -> None:
        """TRL builds transformers generation settings only without vLLM; the in-process behavior copy samples with
        transformers under the sampling settings TRL gives vLLM (args.generation_kwargs are vLLM's, not used)."""
        self.generation_kwargs = {
            "max_new_tokens": self.max_completion_length,
            "do_sample": True,
            "pad_token_id": self._tokenizer.pad_token_id,
            "bos_token_id": self._tokenizer.bos_token_id,
            "eos_token_id": self.eos_token_ids,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
        }
        self.generation_config = GenerationConfig(**self.generation_kwargs, disable_compile=True)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # also when training raises: requests still queued are cancelled, the background thread ends
            if self.behavior_prefetcher is not None:
                self.behavior_prefetcher.close()

    def log(self, logs, start_time=None):
        drop_empty_metrics(self._metrics["train" if self.model.training else "eval"])
        return super().log(logs, start_time)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        super().create_model_card(model_name, dataset_name, tags)
        if self.is_world_process_zero():
            path = self.model.config._name_or_path
            describe_local_base_model(
                os.path.join(self.args.output_dir, "README.md"), path if os.path.isdir(path) else None
            )

    def _log_metrics(self, mode: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._metrics[mode][name].append(value)

    def _reduced(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named sums summed over processes, in one collective (every rank must pass the same names)."""
        names = list(sums)
        flat = self.accelerator.reduce(torch.cat([sums[name].flatten() for name in names]), reduction="sum")
        chunks = flat.split([sums[name].numel() for name in names])
        return {name: chunk.view_as(sums[name]) for name, chunk in zip(names, chunks, strict=True)}

    # ---------------------------------------------------------------------------------------------- generation
    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        age = 0
        if training and self.behavior is not None:
            age = self._refresh_or_prefetch(inputs)
        relay = age > 0
        self._relay_active, self._relay_record, self._relay_rows = relay, None, inputs
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._relay_active, self._relay_rows = False, None
        if training:
            self.generation_batch_index += 1
        record, self._relay_record = self._relay_record, None
        self.last_relay_record = record  # for inspection: None on on-policy and eval batches
        self._add_relay_fields(output, record)
        # TRL leaves pi_old out when generation and optimisation are aligned; a relay batch needs it for Eq. 5, either
        # from a forward now or, with old_logps_from_loss_forward, from the loss forward (see _compute_loss).
        if relay and output.get("old_per_token_logps") is None and self.args.old_logps_from_loss_forward is False:
            output["old_per_token_logps"] = self._old_per_token_logps(output)
        self._log_batch_metrics(output, record, relay, age)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        warn_unscored_rewards(rewards_per_func, self.reward_func_names)
        return rewards_per_func

    def _refresh_or_prefetch(self, inputs) -> int:
        """Refresh the behavior copy when the schedule says so (timed); then request the window's next behavior
        samples. Returns the batch's age: generation batches since the refresh (0: this batch is on-policy)."""
        index, schedule = self.generation_batch_index, self.refresh_schedule
        reason = schedule.decide(index, self.args)
        stats = schedule.stats(index)  # what the decision saw (the last relay batch's)
        metrics = self._metrics["train"]
        for name in REFRESH_REASONS:  # 0/1 each: averaged over steps or ranks, the fraction of batches
            metrics[f"soup/refresh/{name}"].append(float(reason == name))
        if stats.staleness is not None:
            metrics["soup/staleness"].append(stats.staleness)
        if reason != "none":
            if self.behavior_prefetcher is not None:
                self.behavior_prefetcher.clear()  # nothing sampled with the old snapshot may outlive it
            start = time.perf_counter()
            self.behavior.refresh()
            metrics["soup/refresh_time"].append(time.perf_counter() - start)
            schedule.refreshed(index)
        if self.behavior_prefetcher is not None:
            self._prefetch_behavior_samples(inputs)
        return index - schedule.last_refresh

    def _add_relay_fields(self, output, record: RelayRecord | None) -> None:
        """The batch keys SOUP's loss reads: ``prefix_mask`` and ``behavior_per_token_logps`` (0 off the prefix)."""
        completion_ids = output["completion_ids"]
        batch, length = completion_ids.shape
        device = completion_ids.device
        if record is None:
            prefix_lengths = torch.zeros(batch, dtype=torch.long, device=device)
            output["behavior_per_token_logps"] = torch.zeros(batch, length, dtype=torch.float32, device=device)
        else:
            prefix_lengths = record.prefix_lengths.to(device)
            output["behavior_per_token_logps"] = record.behavior_per_token_logps(length, device)
        output["prefix_mask"] = build_prefix_mask(prefix_lengths, length)
        for key, field in GROUP_FIELDS.items():  # which pool member / prefix source wrote each row (-1: none)
            if key in self._prefix_groups:
                values = None if record is None else getattr(record, field)
                output[key] = (torch.full((batch,), -1, dtype=torch.long) if values is None else values).to(device)
        if record is not None and self.use_vllm:  # every rank: relay batches are relay batches on all ranks
            self._restrict_vllm_correction_to_continuation(output)

    def _log_batch_metrics(self, output, record: RelayRecord | None, relay: bool, age: int) -> None:
        mode = "train" if self.model.training else "eval"
        sums = soup_metrics.composition_sums(output["prefix_mask"], _loss_mask(output))
        if record is not None:
            sums["lengths"] = record.length_sums(output["completion_ids"].device)
        sums = self._reduced(sums)  # relay batches are relay batches on every rank: the same keys everywhere
        self._log_metrics(mode, soup_metrics.composition_metrics(sums))
        self._metrics[mode]["soup/relay_batch"].append(float(relay))
        if mode == "train" and self.behavior is not None:
            self._metrics[mode]["soup/behavior_age"].append(float(age))
        if record is not None:
            self._log_metrics(mode, soup_metrics.relay_length_metrics(sums))

    @torch.no_grad()
    def _restrict_vllm_correction_to_continuation(self, output) -> None:
        """Prefix tokens neutral in TRL's vLLM importance-sampling correction (:func:`trl_soup.relay.
        restrict_vllm_correction`); the ``sampling/importance_sampling_ratio/*`` values TRL just logged are replaced
        by their values over the continuation, gathered from every rank (docs/vllm_server.md sec. 5)."""
        summary = restrict_vllm_correction(output)
        if summary is None:  # vllm_importance_sampling_correction=False
            return
        gathered = self.accelerator.gather(summary.unsqueeze(0))  # (num_processes, 3)
        mode = "train" if self.model.training else "eval"
        for name, value in soup_metrics.importance_sampling_metrics(gathered).items():
            self._metrics[mode][name][-1] = value  # replaces TRL's value

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Prefetching reads upcoming batches through a look-ahead on the epoch iterator; the trainer gets the same
        # batches in the same order.
        if self.behavior_prefetcher is not None:
            epoch_iterator = self.behavior_prefetcher.watch(epoch_iterator)
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _prefetch_behavior_samples(self, inputs) -> None:
        """Request the behavior responses of the next relay batches of this refresh window, at most
        ``behavior_prefetch`` generation batches ahead; their prompts are read ahead from the epoch iterator."""
        decode_budget = behavior_decode_budget(self.args.prefix_strategy, self.args)
        if decode_budget <= 0:  # nothing to sample
            return
        every = self.args.steps_per_generation * self.num_iterations  # TRL generates when _step % every == 0
        schedule = prefetch_schedule(
            self.generation_batch_index,
            self.refresh_schedule.window_end(self.args.behavior_refresh_interval),
            self.args.behavior_prefetch,
            every,
            self._step,
            total=-(-self.state.max_steps * self.args.gradient_accumulation_steps // every),
        )
        self.behavior_prefetcher.request_ahead(
            inputs, schedule, self._prompt_ids, decode_budget, self.generation_batch_index
        )

    def _prompt_ids(self, batch) -> list[list[int]]:
        return self._tokenize_prompts([x["prompt"] for x in batch])[0]

    def _behavior_samples(self, prompt_ids, decode_budget):
        """The behavior responses of this generation batch: the prefetched ones when they were requested for this
        batch with the same prompts and budget, else sampled now. Logs the time the step waited for them."""
        start = time.perf_counter()
        samples = None
        if self.behavior_prefetcher is not None:
            samples = self.behavior_prefetcher.take(self.generation_batch_index, prompt_ids, decode_budget)
            self._metrics["train"]["soup/behavior_prefetch_hit"].append(float(samples is not None))
        if samples is None:
            samples = self.behavior.sample(
                prompt_ids, decode_budget, generation_batch_index=self.generation_batch_index, rows=self._relay_rows
            )
        self._metrics["train"]["soup/behavior_wait_time"].append(time.perf_counter() - start)
        return samples

    @torch.no_grad()
    def _old_per_token_logps(self, output) -> torch.Tensor:
        """log pi_old of every completion token: the learner as it is at generation time (start of the step)."""
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1),
                torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1),
                output["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
        return logps

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        decode_budget = behavior_decode_budget(self.args.prefix_strategy, self.args)
        if not self._relay_active or decode_budget <= 0:  # nothing from the behavior copy: every sample on-policy
            result = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            self._log_prefix_columns(result[0], [0] * len(result[0]))
            return result
        if images is not None:
            raise ValueError("SOUPTrainer does not support image prompts in this release.")

        def continue_with_policy(requests, max_new_tokens):
            with generation_budget(self, max_new_tokens):
                return super(SOUPTrainer, self)._generate_single_turn(
                    requests, None, multimodal_fields, 1, has_tool_images
                )

        completion_ids, sampling_logps, self._relay_record = relay_generation(
            prompt_ids,
            self._behavior_samples(prompt_ids, decode_budget),
            self.args,
            self.prefix_generator,
            continue_with_policy,
            max_completion_length=self.max_completion_length,
            use_vllm=self.use_vllm,
            # Under ZeRO-3 / FSDP generation gathers sharded weights collectively: every rank takes part.
            collective=self.is_deepspeed_enabled or self.is_fsdp_enabled,
            reduce_max=self._max_over_ranks if self.use_vllm else None,
        )
        self._log_prefix_columns(completion_ids, self._relay_record.prefix_lengths.tolist())
        return completion_ids, sampling_logps

    def _log_prefix_columns(self, completion_ids, prefix_lengths) -> None:
        """With ``log_completions``, the completions table shows each row's behavior prefix (TRL's extra columns)."""
        if self.log_completions and self.behavior is not None:  # T = 1 has no prefix (and may run tools)
            decode = lambda ids: self._tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731 (as TRL's text)
            for column, values in prefix_columns(completion_ids, prefix_lengths, decode).items():
                self._pending_extra_logs[column].extend(values)

    def _max_over_ranks(self, value: int) -> int:
        return int(self.accelerator.reduce(torch.tensor(value, device=self.accelerator.device), reduction="max"))

    # ---------------------------------------------------------------------------------------------- loss
    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if self._loss_capture is not None:
            self._loss_capture.record(result[0], result[1])
        return result

    def _compute_loss(self, model, inputs):
        prefix_mask = inputs["prefix_mask"]
        old = inputs.get("old_per_token_logps")
        capture = LossCapture()
        if old is not None:
            # Paper Eq. 5: the ratio's denominator is pi_behavior on prefix tokens and pi_old on continuation tokens.
            denominator = mixed_old_per_token_logps(prefix_mask, inputs["behavior_per_token_logps"], old)
            inputs = {**inputs, "old_per_token_logps": denominator}
        elif bool(prefix_mask.any()):
            if self.args.old_logps_from_loss_forward is False:
                raise RuntimeError("A relay batch reached the loss without old_per_token_logps.")
            # Eq. 5 with pi_old taken from the loss forward: behavior log-probs on the prefix now, the continuation
            # is filled in place by LossCapture.record before TRL computes the ratio.
            capture.deferred_denominator = inputs["behavior_per_token_logps"].clone()
            capture.deferred_prefix_mask = prefix_mask
            inputs = {**inputs, "old_per_token_logps": capture.deferred_denominator}
        self._loss_capture = capture
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._loss_capture = None
        self._log_segment_statistics(inputs, capture)
        return loss

    @torch.no_grad()
    def _log_segment_statistics(self, inputs, capture: LossCapture) -> None:
        """soup/ metrics split by prefix and continuation (paper Fig. 5), and by position with
        ``log_position_statistics``."""
        mode = "train" if self.model.training else "eval"
        mask = _loss_mask(inputs)
        values = soup_metrics.segment_statistic_values(
            capture.per_token_logps,
            inputs.get("old_per_token_logps"),
            inputs["advantages"],
            capture.entropies,
            self.epsilon_low,
            self.epsilon_high,
        )
        segments = soup_metrics.segment_statistics_sums(values, mask, inputs["prefix_mask"])
        sums = {f"segment/{name}": value for name, value in segments.items()}
        if self.args.log_position_statistics:
            sums |= {f"position/{k}": v for k, v in soup_metrics.position_sums(values, mask).items()}
        for key, names in self._prefix_groups.items():  # by pool member age, by prefix source (same keys everywhere)
            groups = inputs.get(key, torch.full_like(inputs["advantages"], -1, dtype=torch.long))
            sums[f"group/{key}"] = soup_metrics.prefix_group_sums(
                values, mask, inputs["prefix_mask"], groups, len(names)
            )
        sums = self._reduced(sums)
        if mode == "train" and self.behavior is not None:  # the staleness of the copy, for the refresh policy
            self.refresh_schedule.add(*soup_metrics.prefix_staleness_sums(_select(sums, "segment/")))
        self._log_metrics(mode, soup_metrics.segment_metrics(_select(sums, "segment/")))
        self._log_metrics(mode, soup_metrics.position_metrics(_select(sums, "position/")))
        for key, names in self._prefix_groups.items():
            self._log_metrics(mode, soup_metrics.prefix_group_metrics(sums[f"group/{key}"], names))

    # ---------------------------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.behavior is not None:
            self.behavior.clean_saved_model(output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        output_dir = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        # A single snapshot is needed only mid-window: when the next batch refreshes it for sure (T reached), it is
        # not. A pool keeps what survives the next refresh (BehaviorBackend.checkpoint_snapshot).
        T = self.args.behavior_refresh_interval
        last = self.refresh_schedule.last_refresh
        mid_window = last is not None and self.generation_batch_index - last < T
        os.makedirs(output_dir, exist_ok=True)  # another rank may get here before the main process created it
        save_rng_state(output_dir, self.accelerator.process_index, self.prefix_generator)
        # every rank: a ZeRO-3 snapshot is gathered collectively; the main process writes
        saved = self.behavior is not None and self.behavior.checkpoint_snapshot(
            os.path.join(output_dir, SNAPSHOT_DIR), mid_window
        )
        state = SOUPState(
            self.generation_batch_index, T, saved, self.refresh_schedule.state_dict(), self.args.behavior_pool_size
        )
        if self.args.should_save:
            state.save(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        state = SOUPState.load(checkpoint, self.args.behavior_refresh_interval, self.args.behavior_pool_size)
        self.generation_batch_index = state.generation_batch_index
        self.refresh_schedule = state.schedule()
        if state.behavior_snapshot:
            self.behavior.load_snapshot(os.path.join(checkpoint, SNAPSHOT_DIR))
        load_rng_state(checkpoint, self.accelerator.process_index, self.prefix_generator)


def _select(sums: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix) :]: value for name, value in sums.items() if name.startswith(prefix)}


def _loss_mask(batch) -> torch.Tensor:
    """The tokens TRL's loss counts: the completion mask, times the tool mask of tool-calling runs (T = 1 only)."""
    mask = batch["completion_mask"]
    return mask if "tool_mask" not in batch else mask * batch["tool_mask"]
