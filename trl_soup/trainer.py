"""SOUPTrainer: TRL's GRPOTrainer with relay sampling from a frozen historical copy (arXiv 2601.21476).

Glue only (docs/architecture.md): the math lives in :mod:`trl_soup.core`, relay sampling in :mod:`trl_soup.relay`,
the ``soup/`` metrics in :mod:`trl_soup.metrics`, the records passed between hooks in :mod:`trl_soup.records`, the
checkpoint state in :mod:`trl_soup.state` and the historical copy in :mod:`trl_soup.behavior`.
"""

from __future__ import annotations

import inspect
import os

import torch
from trl import GRPOTrainer

from . import metrics as soup_metrics
from ._compat import PREFIX_CHECKPOINT_DIR, disable_gradient_checkpointing, generation_budget
from .behavior.sources import build_prefix_sources
from .checks import check_trainer_arguments, check_trainer_setup, warn_unscored_rewards
from .config import SOUPConfig
from .records import LossCapture, RelayRecord, relay_batch_fields
from .relay import relay_generation, restrict_vllm_correction
from .reporting import SOUP_PAPER, describe_local_base_model, drop_empty_metrics, prefix_columns
from .session import RelaySession
from .sources import source_names
from .state import SNAPSHOT_DIR, SOUP_STATE_FILE

__all__ = ["SNAPSHOT_DIR", "SOUP_STATE_FILE", "SOUPTrainer"]


class SOUPTrainer(GRPOTrainer):
    """GRPO/DAPO trainer in which most trajectories are written in relay by two policies (SOUP).

    Every ``behavior_refresh_interval`` (T) generation batches (or sooner, by ``behavior_refresh_policy``) the behavior
    copy is refreshed from the learner; that batch is plain on-policy. In the batches that follow, for each sample the
    behavior copy writes a full response, the response is cut by ``prefix_strategy``, and the current policy
    continues from ``[prompt, prefix]`` with the remaining budget ``max_completion_length - len(prefix)``. The loss is
    TRL's with the ratio denominator of paper Eq. 5 (pi_behavior on prefix tokens, pi_old on continuation tokens).

    Hooks overridden, each calling ``super()`` (docs/architecture.md, "One relay step"):

    - ``_generate_and_score_completions``: refreshes the copy when due (:class:`trl_soup.session.RelaySession`), adds
      ``prefix_mask`` and ``behavior_per_token_logps``, computes ``old_per_token_logps`` on relay batches when TRL
      skipped it (unless ``old_logps_from_loss_forward``); with vLLM, TRL's importance-sampling ratio is exactly 1 on
      prefix tokens and its ``sampling/`` metrics cover the continuation only.
    - ``_generate_single_turn``: relay sampling (:func:`trl_soup.relay.relay_generation`), TRL's own generation
      (transformers or vLLM) writing the continuations.
    - ``_calculate_rewards``: warns, naming the reward function, when it scored no completion of a batch.
    - ``_compute_loss``: the Eq. 5 denominator (:meth:`trl_soup.records.LossCapture.loss_inputs`), then ``soup/``
      statistics by segment; ``_get_per_token_logps_and_entropies`` records the loss forward for them.
    - ``get_batch_samples`` (transformers' Trainer): with ``behavior_prefetch > 0``, a look-ahead on the epoch
      iterator (same batches, same order) so that the next relay batches' behavior responses are sampled early.
    - ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: the relay session's state; ``_save``: the backend
      removes what is not the trained model; ``train``: the prefetcher ends when training returns or raises.
    - ``log``: no metric with only NaN since the last log; ``create_model_card``: names SOUP and its paper.
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
        # During one generation: whether it is relay, its dataset rows (for the dataset source), what the relay did.
        self._relay_active, self._relay_rows, self._relay_record = False, None, None
        self._loss_capture: LossCapture | None = None  # set for the duration of one _compute_loss
        self.last_relay_record: RelayRecord | None = None  # the last relay batch's record; None after other batches
        self.relay_session = RelaySession(args, self.accelerator.process_index, self._metrics["train"])
        # The behavior copy, pool or prefix sources; T = 1 never produces a relay batch: no behavior copy at all.
        behavior = build_prefix_sources(self) if args.behavior_refresh_interval > 1 else None
        self.relay_session.attach(behavior)
        groups = soup_metrics.prefix_group_names(args.behavior_pool_size, source_names(args))
        self._prefix_groups = groups if behavior is not None else {}  # batch key -> metric names of its groups

    # The relay session's state, under the names 0.2 gave it on the trainer (read by backends, tests and tools).
    behavior = property(lambda self: self.relay_session.behavior, doc="What writes the prefixes (None for T = 1).")
    generation_batch_index = property(lambda self: self.relay_session.generation_batch_index)
    refresh_schedule = property(lambda self: self.relay_session.schedule)
    behavior_prefetcher = property(lambda self: self.relay_session.prefetcher)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # also when training raises: requests still queued are cancelled, the background thread ends
            self.relay_session.close()

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
        return soup_metrics.reduce_sums(sums, lambda flat: self.accelerator.reduce(flat, reduction="sum"))

    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        age = self._refresh_or_prefetch(inputs) if training and self.behavior is not None else 0
        relay = age > 0
        self._relay_active, self._relay_record, self._relay_rows = relay, None, inputs
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._relay_active, self._relay_rows = False, None
        if training:
            self.relay_session.end_batch()
        record, self._relay_record = self._relay_record, None
        self.last_relay_record = record  # for inspection: None on on-policy and eval batches
        output.update(relay_batch_fields(record, output["completion_ids"], self._prefix_groups))
        if record is not None and self.use_vllm:  # every rank: relay batches are relay batches on all ranks
            self._restrict_vllm_correction_to_continuation(output)
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
        """Refresh the behavior copy when due, then request the window's next behavior samples (RelaySession).
        Returns the batch's age: generation batches since the refresh (0: this batch is on-policy)."""
        age = self.relay_session.begin_batch()
        every = self.args.steps_per_generation * self.num_iterations  # TRL generates when _step % every == 0
        total = -(-self.state.max_steps * self.args.gradient_accumulation_steps // every)
        prompt_ids = lambda batch: self._tokenize_prompts([x["prompt"] for x in batch])[0]  # noqa: E731
        self.relay_session.prefetch(inputs, prompt_ids, self._step, total, every)
        return age

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
        """Prefix tokens neutral in TRL's vLLM correction (:func:`trl_soup.relay.restrict_vllm_correction`); TRL's
        ``sampling/importance_sampling_ratio/*`` replaced by their values over the continuation, from every rank."""
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
        if not self._relay_active or self.relay_session.decode_budget <= 0:  # nothing from the behavior copy
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
            self.relay_session.behavior_samples(prompt_ids, rows=self._relay_rows),
            self.args,
            self.relay_session.prefix_generator,
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

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if self._loss_capture is not None:
            self._loss_capture.record(result[0], result[1])
        return result

    def _compute_loss(self, model, inputs):
        capture = LossCapture()  # the Eq. 5 denominator (records.LossCapture.loss_inputs), and what the forward saw
        inputs = capture.loss_inputs(inputs, defer_allowed=self.args.old_logps_from_loss_forward is not False)
        self._loss_capture = capture
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._loss_capture = None
        self._log_segment_statistics(inputs, capture)
        return loss

    @torch.no_grad()
    def _log_segment_statistics(self, inputs, capture: LossCapture) -> None:
        """soup/ metrics split by prefix and continuation (paper Fig. 5), by position with
        ``log_position_statistics``, and by pool member / prefix source; feeds the refresh policy's staleness."""
        mode = "train" if self.model.training else "eval"
        values = soup_metrics.segment_statistic_values(
            capture.per_token_logps,
            inputs.get("old_per_token_logps"),
            inputs["advantages"],
            capture.entropies,
            self.epsilon_low,
            self.epsilon_high,
        )
        no_group = torch.full_like(inputs["advantages"], -1, dtype=torch.long)
        groups = {key: (inputs.get(key, no_group), len(names)) for key, names in self._prefix_groups.items()}
        sums = soup_metrics.loss_statistics_sums(
            values, _loss_mask(inputs), inputs["prefix_mask"], groups, self.args.log_position_statistics
        )
        sums = self._reduced(sums)  # the same keys on every rank
        if mode == "train" and self.behavior is not None:  # the staleness of the copy, for the refresh policy
            self.refresh_schedule.add(*soup_metrics.prefix_staleness_sums(soup_metrics.select_sums(sums, "segment/")))
        self._log_metrics(mode, soup_metrics.loss_statistics_metrics(sums, self._prefix_groups))

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.behavior is not None:
            self.behavior.clean_saved_model(output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        run_dir = self._get_output_dir(trial=trial)
        checkpoint = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self.relay_session.save(checkpoint, self.args.should_save)  # every rank (a ZeRO-3 snapshot is collective)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.relay_session.load(checkpoint)


def _loss_mask(batch) -> torch.Tensor:
    """The tokens TRL's loss counts: the completion mask, times the tool mask of tool-calling runs (T = 1 only)."""
    mask = batch["completion_mask"]
    return mask if "tool_mask" not in batch else mask * batch["tool_mask"]
