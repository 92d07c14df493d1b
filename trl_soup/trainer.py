"""SOUPTrainer: TRL's GRPOTrainer with relay sampling from a frozen historical copy (arXiv 2601.21476).

Glue only: the math lives in :mod:`trl_soup.core`, the historical copy in :mod:`trl_soup.behavior`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import time
import warnings

import torch

from transformers import GenerationConfig
from trl import GRPOTrainer

from ._compat import PREFIX_CHECKPOINT_DIR, disable_gradient_checkpointing
from .behavior import build_behavior_backend
from .behavior.local import BEHAVIOR_ADAPTER
from .behavior.prefetch import BehaviorPrefetcher
from .checks import check_trainer_arguments
from .config import SOUPConfig
from .core import (
    build_prefix_mask,
    clipped_token_mask,
    continuation_budgets,
    mixed_old_per_token_logps,
    position_bin_sums,
    segment_means,
    segment_sums,
)
from .truncation import behavior_decode_budget, compute_prefix_lengths

SOUP_STATE_FILE = "soup_state.pt"
POSITION_BINS = 10  # paper Fig. 5: 10% bins of relative token position
SNAPSHOT_DIR = "behavior_snapshot"  # inside a checkpoint, written only mid-window


def continuation_importance_sampling_ratio(ratio: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
    """TRL's vLLM importance-sampling ratio restricted to the continuation: exactly 1 on prefix tokens.

    SOUP's prefix tokens are weighted by pi_theta / pi_behavior with the behavior's own sampling log-probs (paper
    Eq. 5), so no inference-mismatch correction applies to them; the continuation keeps TRL's ratio
    ``pi_old / pi_vLLM`` (token-level, or one value per sequence computed from the continuation only).

    Args:
        ratio: ``(B, T)`` token-level or ``(B, 1)`` sequence-level correction computed by TRL.
        prefix_mask: ``(B, T)``, 1 on prefix (behavior) tokens.

    Returns:
        ``(B, T)``: 1 on prefix tokens, ``ratio`` (broadcast) elsewhere.
    """
    return torch.where(prefix_mask.bool(), torch.ones_like(ratio), ratio)  # broadcasts (B, 1) to (B, T)


class SOUPTrainer(GRPOTrainer):
    """GRPO/DAPO trainer in which most trajectories are written in relay by two policies (SOUP).

    Every ``behavior_refresh_interval`` (T) generation batches the behavior copy is refreshed from the learner; that
    batch is plain on-policy. In the T - 1 batches that follow, for each sample the behavior copy writes a full
    response, the response is cut by ``prefix_strategy``, and the current policy continues from ``[prompt, prefix]``
    with the remaining budget ``max_completion_length - len(prefix)``. The loss is TRL's with the ratio denominator of
    paper Eq. 5 (pi_behavior on prefix tokens, pi_old on continuation tokens).

    Hooks overridden, each calling ``super()``:

    - ``_generate_and_score_completions``: refreshes the behavior copy when due, then adds ``prefix_mask`` and
      ``behavior_per_token_logps`` to the batch and makes sure ``old_per_token_logps`` exists on relay batches (TRL
      skips it when generation and optimisation are aligned, which would turn the prefix ratio into 1), unless
      ``old_logps_from_loss_forward`` defers it to the loss forward.
    - ``_generate_single_turn``: relay sampling (behavior sample, truncate, continue with TRL's own generation:
      transformers or vLLM, one request per (prompt, prefix) row, each row cut to its own budget). With vLLM, prefix
      tokens get NaN sampling log-probs so that TRL's importance-sampling correction leaves them out;
      ``_generate_and_score_completions`` then sets their ratio to exactly 1 and restricts TRL's ``sampling/`` metrics
      to the continuation (docs/vllm_server.md sec. 5).
    - ``_compute_loss``: swaps in the mixed denominator, then logs ``soup/`` statistics split by segment.
    - ``_get_per_token_logps_and_entropies``: records the values of the loss forward for those statistics and, with
      ``old_logps_from_loss_forward``, fills the continuation's pi_old from them.
    - ``get_batch_samples`` (transformers' Trainer): with ``behavior_prefetch > 0``, wraps the epoch iterator in a
      look-ahead so the prompts of the next generation batches can be read early (the batches and their order are
      unchanged); their behavior responses are then sampled in the background (:mod:`trl_soup.behavior.prefetch`).
    - ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: save and restore the refresh counter, the
      truncation RNG and, mid-window, the behavior snapshot; ``_save``: leaves the PEFT behavior adapter out of saved
      models.
    - ``train``: closes the prefetcher when training returns or raises (no background thread outlives it).
    """

    _tag_names = ["trl", "grpo", "soup"]

    def __init__(self, model, reward_funcs=None, args: SOUPConfig | None = None, *pargs, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = SOUPConfig(f"{model_name.split('/')[-1]}-SOUP")
        if not isinstance(args, SOUPConfig):
            raise TypeError(f"SOUPTrainer needs a SOUPConfig, got {type(args).__name__}.")
        bound = inspect.signature(GRPOTrainer.__init__).bind_partial(None, model, reward_funcs, args, *pargs, **kwargs)
        check_trainer_arguments(args, bound.arguments)  # before the model is loaded
        relay = args.behavior_refresh_interval > 1  # T = 1 is plain DAPO: every GRPOTrainer option applies
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        if relay and self.is_fsdp_enabled:
            raise ValueError(
                "SOUPTrainer does not support FSDP in this release (the accelerate config asks for it): the behavior "
                "copy and its refresh are written for unsharded or DeepSpeed ZeRO-3 parameters. Use DDP or DeepSpeed "
                "ZeRO-1/2/3."
            )
        if relay and self._is_vlm:
            raise ValueError("SOUPTrainer's relay batches support text-only models in this release; got a "
                             "vision-language processor. Allowed: a text model, or behavior_refresh_interval=1.")

        every = args.steps_per_generation * self.num_iterations
        if args.old_logps_from_loss_forward and (args.gradient_accumulation_steps % every != 0 or (
                self.use_vllm and self.vllm_importance_sampling_correction)):
            warnings.warn(
                "old_logps_from_loss_forward=True has no effect with these settings: TRL computes pi_old itself "
                f"(num_iterations={self.num_iterations}, steps_per_generation={args.steps_per_generation}, "
                f"gradient_accumulation_steps={args.gradient_accumulation_steps}, use_vllm={self.use_vllm}), because "
                "the weights change between generation and the loss or vLLM's importance-sampling correction needs it.",
                UserWarning, stacklevel=2,
            )
        self.generation_batch_index = 0  # generation batches produced so far in training (the refresh counter)
        self._relay_plan: dict | None = None  # set for the duration of one relay generation
        self._relay_record: dict | None = None  # what _generate_single_turn did, read back in the same call stack
        self._soup_capture: dict | None = None
        self.last_relay_record: dict | None = None
        self.prefix_generator = torch.Generator().manual_seed(args.seed + self.accelerator.process_index)
        if self.use_vllm:
            # TRL builds transformers generation settings only without vLLM; the in-process behavior copy samples with
            # transformers under the sampling settings TRL gives vLLM (args.generation_kwargs are vLLM's, not used).
            self.generation_kwargs = {
                "max_new_tokens": self.max_completion_length, "do_sample": True,
                "pad_token_id": self._tokenizer.pad_token_id, "bos_token_id": self._tokenizer.bos_token_id,
                "eos_token_id": self.eos_token_ids, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
            }
            self.generation_config = GenerationConfig(**self.generation_kwargs, disable_compile=True)
        T = args.behavior_refresh_interval
        # T = 1 never produces a relay batch: no behavior copy is built at all.
        self.behavior = build_behavior_backend(args.behavior_backend, self) if T > 1 else None
        # Behavior samples of the next relay batches of the window, drawn in the background (docs/performance.md).
        self.behavior_prefetcher = None
        if self.behavior is not None and args.behavior_prefetch > 0:
            self.behavior_prefetcher = BehaviorPrefetcher(
                lambda ids, budget, index: self.behavior.sample(ids, budget, generation_batch_index=index),
                args.behavior_prefetch,
            )

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # also when training raises: requests still queued are cancelled, the background thread ends
            if self.behavior_prefetcher is not None:
                self.behavior_prefetcher.close()

    # ---------------------------------------------------------------------------------------------- generation
    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        age = self.generation_batch_index % self.args.behavior_refresh_interval
        relay = mode == "train" and self.behavior is not None and age > 0
        if mode == "train" and self.behavior is not None and age == 0:
            if self.behavior_prefetcher is not None:
                self.behavior_prefetcher.clear()  # nothing sampled with the old snapshot may outlive it
            start = time.perf_counter()
            self.behavior.refresh()
            self._metrics[mode]["soup/refresh_time"].append(time.perf_counter() - start)
        if mode == "train" and self.behavior_prefetcher is not None:
            self._prefetch_behavior_samples(inputs)
        self._relay_plan = {"relay": relay}
        self._relay_record = None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._relay_plan = None
        if mode == "train":
            self.generation_batch_index += 1
        record, self._relay_record = self._relay_record, None
        self.last_relay_record = record  # for inspection: None on on-policy and eval batches

        completion_ids = output["completion_ids"]
        batch, length = completion_ids.shape
        device = completion_ids.device
        prefix_lengths = torch.zeros(batch, dtype=torch.long, device=device)
        behavior_per_token_logps = torch.zeros(batch, length, dtype=torch.float32, device=device)
        if record is not None:
            prefix_lengths = record["prefix_lengths"].to(device)
            for i, logps in enumerate(record["prefix_logps"]):
                behavior_per_token_logps[i, : logps.numel()] = logps.to(device)
        prefix_mask = build_prefix_mask(prefix_lengths, length)
        output["prefix_mask"] = prefix_mask
        output["behavior_per_token_logps"] = behavior_per_token_logps
        if record is not None and self.use_vllm:  # every rank: relay batches are relay batches on all ranks
            self._restrict_vllm_correction_to_continuation(output, mode)

        # TRL leaves pi_old out when generation and optimisation are aligned; a relay batch needs it for Eq. 5, either
        # from a forward now or, with old_logps_from_loss_forward, from the loss forward (see _compute_loss).
        if relay and output.get("old_per_token_logps") is None and not self.args.old_logps_from_loss_forward:
            output["old_per_token_logps"] = self._old_per_token_logps(output)

        loss_mask = output["completion_mask"] if "tool_mask" not in output else output["completion_mask"] * output["tool_mask"]
        sums = segment_sums(torch.ones_like(prefix_mask, dtype=torch.float32), loss_mask, prefix_mask)
        sums = self.accelerator.reduce(sums, reduction="sum")
        metrics = self._metrics[mode]
        metrics["soup/prefix_fraction"].append((sums[1] / (sums[1] + sums[3]).clamp(min=1.0)).item())
        metrics["soup/relay_batch"].append(float(relay))
        if mode == "train" and self.behavior is not None:
            metrics["soup/behavior_age"].append(float(age))
        if record is not None:
            stats = torch.tensor(
                [record["prefix_lengths"].float().sum(), record["behavior_lengths"].float().sum(),
                 record["no_continuation"].float().sum(), float(batch)],
                device=device,
            )
            stats = self.accelerator.reduce(stats, reduction="sum")
            metrics["soup/prefix_length/mean"].append((stats[0] / stats[3]).item())
            metrics["soup/behavior_length/mean"].append((stats[1] / stats[3]).item())
            metrics["soup/no_continuation_fraction"].append((stats[2] / stats[3]).item())
        return output

    @torch.no_grad()
    def _restrict_vllm_correction_to_continuation(self, output, mode: str) -> None:
        """Make prefix tokens neutral in TRL's vLLM importance-sampling correction and in its metrics.

        The relay generation gave TRL NaN sampling log-probs on prefix tokens, so TRL's correction already ignored
        them (a zero log-ratio: ratio 1 in token modes, no share of a sequence-level ratio). Here the ratio is set to
        exactly 1 on prefix tokens in every mode (a sequence ratio is broadcast over the continuation only), the
        behavior log-probs replace the NaN in ``sampling_per_token_logps``, and the three
        ``sampling/importance_sampling_ratio/*`` values TRL just logged are recomputed over continuation tokens (token
        modes) or over sequences with a continuation (sequence modes).
        """
        prefix_mask = output["prefix_mask"]
        is_prefix = prefix_mask.bool()
        sampling = output.get("sampling_per_token_logps")
        if sampling is not None:
            output["sampling_per_token_logps"] = torch.where(is_prefix, output["behavior_per_token_logps"], sampling)
        ratio = output.get("importance_sampling_ratio")
        if ratio is None:  # vllm_importance_sampling_correction=False
            return
        output["importance_sampling_ratio"] = continuation_importance_sampling_ratio(ratio, prefix_mask)
        continuation = output["completion_mask"].bool() & ~is_prefix  # tools are refused: no tool_mask here
        values = ratio[continuation.any(dim=1)].flatten() if ratio.size(1) == 1 else ratio[continuation]
        stats = torch.full((3,), float("nan"), device=ratio.device)
        if values.numel() > 0:  # a rank without continuation tokens reports NaN, which the reduction skips
            stats = torch.stack([values.min(), values.mean(), values.max()])
        gathered = self.accelerator.gather(stats.unsqueeze(0))  # (num_processes, 3)
        for column, (name, reduce) in enumerate((("min", torch.min), ("mean", torch.mean), ("max", torch.max))):
            finite = gathered[:, column][~gathered[:, column].isnan()]
            value = reduce(finite).item() if finite.numel() > 0 else float("nan")
            self._metrics[mode][f"sampling/importance_sampling_ratio/{name}"][-1] = value  # replaces TRL's value

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Prefetching reads upcoming batches through a look-ahead on the epoch iterator; the trainer gets the same
        # batches in the same order.
        if self.behavior_prefetcher is not None:
            epoch_iterator = self.behavior_prefetcher.watch(epoch_iterator)
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _prefetch_behavior_samples(self, inputs) -> None:
        """Request the behavior responses of the next relay batches of this refresh window, at most
        ``behavior_prefetch`` generation batches ahead; their prompts are read ahead from the epoch iterator."""
        prefetcher = self.behavior_prefetcher
        position = None if prefetcher.lookahead is None else prefetcher.lookahead.position(inputs)
        decode_budget = behavior_decode_budget(self.args.prefix_strategy, self.args)
        if position is None or decode_budget <= 0:  # not a batch of the epoch iterator, or nothing to sample
            return
        T = self.args.behavior_refresh_interval
        every = self.args.steps_per_generation * self.num_iterations  # TRL generates when _step % every == 0
        first = every - self._step % every  # micro-steps (= batches of the iterator) to the next generation
        current = self.generation_batch_index
        total = -(-self.state.max_steps * self.args.gradient_accumulation_steps // every)  # batches of the whole run
        for ahead in range(1, self.args.behavior_prefetch + 1):
            index = current + ahead
            if index // T != current // T or index >= total:
                break  # the next window samples with a snapshot that does not exist yet; past the end, nothing
            batch = prefetcher.lookahead.peek(position + first + (ahead - 1) * every)
            if batch is None:
                break  # end of the epoch
            if not prefetcher.has(index):
                prompt_ids, _, _ = self._tokenize_prompts([x["prompt"] for x in batch])
                prefetcher.submit(index, prompt_ids, decode_budget, current=current)

    def _behavior_samples(self, prompt_ids, decode_budget):
        """The behavior responses of this generation batch: the prefetched ones when they were requested for this
        batch with the same prompts and budget, else sampled now. Logs the time the step waited for them."""
        start = time.perf_counter()
        samples = None
        if self.behavior_prefetcher is not None:
            samples = self.behavior_prefetcher.take(self.generation_batch_index, prompt_ids, decode_budget)
            self._metrics["train"]["soup/behavior_prefetch_hit"].append(float(samples is not None))
        prefetched = samples is not None
        if samples is None:
            samples = self.behavior.sample(prompt_ids, decode_budget, generation_batch_index=self.generation_batch_index)
        self._metrics["train"]["soup/behavior_wait_time"].append(time.perf_counter() - start)
        return samples, prefetched

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
        plan = self._relay_plan
        if plan is None or not plan["relay"]:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        if images is not None:
            raise ValueError("SOUPTrainer does not support image prompts in this release.")

        decode_budget = behavior_decode_budget(self.args.prefix_strategy, self.args)
        if decode_budget <= 0:  # nothing to keep from the behavior copy: every sample is on-policy
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        samples, prefetched = self._behavior_samples(prompt_ids, decode_budget)
        prefix_lengths = compute_prefix_lengths(
            self.args.prefix_strategy,
            samples.completion_ids,
            samples.per_token_logps,
            samples.entropies,
            samples.mask,
            self.prefix_generator,
            self.args,
        ).cpu()
        lengths = samples.lengths.cpu()
        budgets, finished = continuation_budgets(prefix_lengths, lengths, samples.ended_with_eos.cpu(),
                                                 self.max_completion_length)
        behavior_ids = samples.completion_ids.cpu()
        prefixes = [behavior_ids[i, : prefix_lengths[i]].tolist() for i in range(len(prompt_ids))]
        rows = [i for i in range(len(prompt_ids)) if not finished[i]]

        continuations: dict[int, list[int]] = {}
        continuation_logps: dict[int, list[float]] = {}  # vLLM's sampling log-probs of the continuation tokens
        # Under ZeRO-3 / FSDP, generation gathers sharded weights collectively: every rank must take part even when
        # none of its rows needs a continuation, so such a rank decodes one throw-away token.
        collective = self.is_deepspeed_enabled or self.is_fsdp_enabled
        # TRL's vLLM path gathers the requests of all ranks and hands the answers back in equal slices, under one
        # max_tokens: there every rank sends one request per row (a finished row's answer is dropped) and asks for the
        # largest budget of any rank.
        sent = list(range(len(prompt_ids))) if self.use_vllm else rows
        if sent or collective:
            max_budget = int(budgets[rows].max()) if rows else 1
            if self.use_vllm:
                max_budget = int(self.accelerator.reduce(torch.tensor(max_budget, device=self.accelerator.device),
                                                         reduction="max"))
            requests = [list(prompt_ids[i]) + prefixes[i] for i in sent] or [list(prompt_ids[0])]
            with self._continuation_budget(max_budget):
                cont_ids, cont_logps = super()._generate_single_turn(requests, None, multimodal_fields, 1,
                                                                     has_tool_images)
            for k, i in enumerate(sent):
                if not finished[i]:
                    budget = int(budgets[i])  # per-row budget max_completion_length - len(prefix)
                    continuations[i] = list(cont_ids[k])[:budget]
                    if cont_logps is not None:
                        continuation_logps[i] = list(cont_logps[k])[:budget]  # truncated exactly like the tokens

        completion_ids = [prefixes[i] + continuations.get(i, []) for i in range(len(prompt_ids))]
        sampling_logps = None
        if self.use_vllm:
            # NaN is TRL's "no sampling log-prob" marker: its vLLM importance-sampling correction gives such a token a
            # zero log-ratio (ratio 1, no weight in a sequence-level ratio) and leaves it out of its log-prob metrics.
            # The prefix was sampled by the behavior copy, whose log-probs are the loss denominator there (Eq. 5);
            # _generate_and_score_completions puts them back in place of the NaN afterwards.
            sampling_logps = [[float("nan")] * len(prefixes[i]) + continuation_logps.get(i, [])
                              for i in range(len(prompt_ids))]
        self._relay_record = {
            "prefix_lengths": prefix_lengths,
            "prefix_logps": [samples.per_token_logps[i, : prefix_lengths[i]].float() for i in range(len(prompt_ids))],
            "behavior_lengths": lengths,
            "no_continuation": finished,
            "behavior_prefetched": prefetched,
            # kept for inspection and tests: the full responses the behavior copy sampled
            "behavior_completion_ids": [behavior_ids[i, : lengths[i]].tolist() for i in range(len(prompt_ids))],
        }
        return completion_ids, sampling_logps

    @contextlib.contextmanager
    def _continuation_budget(self, max_new_tokens: int):
        """Temporarily set TRL's generation budget (transformers or vLLM) to `max_new_tokens` tokens."""
        if self.use_vllm:
            saved = self.vllm_generation.max_completion_length
            self.vllm_generation.max_completion_length = max_new_tokens
            try:
                yield
            finally:
                self.vllm_generation.max_completion_length = saved
            return
        saved = self.generation_config.max_new_tokens, self.generation_kwargs.get("max_new_tokens")
        self.generation_config.max_new_tokens = max_new_tokens
        self.generation_kwargs["max_new_tokens"] = max_new_tokens
        try:
            yield
        finally:
            self.generation_config.max_new_tokens, self.generation_kwargs["max_new_tokens"] = saved

    # ---------------------------------------------------------------------------------------------- loss
    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        capture = self._soup_capture
        if capture is not None:
            capture["per_token_logps"] = result[0].detach()
            capture["entropies"] = None if result[1] is None else result[1].detach()
            deferred = capture.pop("deferred_denominator", None)
            if deferred is not None:
                # pi_old of the continuation is the loss forward's own log-prob (same weights: generation and
                # optimisation are aligned). TRL reads the denominator from the batch after this forward.
                denominator, prefix_mask = deferred
                denominator.copy_(mixed_old_per_token_logps(prefix_mask, denominator, result[0].detach()))  # Eq. 5
        return result

    def _compute_loss(self, model, inputs):
        prefix_mask = inputs["prefix_mask"]
        completion_mask = inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        capture = {}
        if old is not None:
            # Paper Eq. 5: the ratio's denominator is pi_behavior on prefix tokens and pi_old on continuation tokens.
            denominator = mixed_old_per_token_logps(prefix_mask, inputs["behavior_per_token_logps"], old)
            inputs = {**inputs, "old_per_token_logps": denominator}
        elif bool(prefix_mask.any()):
            if not self.args.old_logps_from_loss_forward:
                raise RuntimeError("A relay batch reached the loss without old_per_token_logps.")
            # Eq. 5 with pi_old taken from the loss forward: behavior log-probs on the prefix now, the continuation
            # is filled in place by _get_per_token_logps_and_entropies before TRL computes the ratio.
            denominator = inputs["behavior_per_token_logps"].clone()
            capture["deferred_denominator"] = (denominator, prefix_mask)
            inputs = {**inputs, "old_per_token_logps": denominator}

        self._soup_capture = capture
        try:
            loss = super()._compute_loss(model, inputs)
            captured = self._soup_capture
        finally:
            self._soup_capture = None
        self._log_segment_statistics(inputs, captured, mask, prefix_mask)
        return loss

    @torch.no_grad()
    def _log_segment_statistics(self, inputs, captured, mask, prefix_mask):
        """soup/ metrics split by prefix and continuation (paper Fig. 5): clip ratio, entropy, |log-ratio|."""
        mode = "train" if self.model.training else "eval"
        per_token_logps = captured["per_token_logps"]
        denominator = inputs.get("old_per_token_logps")
        denominator = per_token_logps if denominator is None else denominator
        log_ratio = per_token_logps - denominator
        clipped = clipped_token_mask(torch.exp(log_ratio), inputs["advantages"], self.epsilon_low, self.epsilon_high)
        statistics = {
            "clip_ratio": clipped.float(),
            "log_ratio": log_ratio.abs(),
        }
        if captured.get("entropies") is not None:
            statistics["entropy"] = captured["entropies"]
        if self.args.log_position_statistics:
            self._log_position_statistics(statistics, mask)
        sums = torch.stack([segment_sums(v, mask, prefix_mask) for v in statistics.values()])
        sums = self.accelerator.reduce(sums, reduction="sum")
        metrics = self._metrics[mode]
        for (name, _), row in zip(statistics.items(), sums, strict=True):
            prefix, continuation = segment_means(row)
            if name == "log_ratio":
                metrics["soup/log_ratio/prefix_abs_mean"].append(prefix)
                metrics["soup/log_ratio/continuation_abs_mean"].append(continuation)
            else:
                metrics[f"soup/{name}/prefix"].append(prefix)
                metrics[f"soup/{name}/continuation"].append(continuation)

    def _log_position_statistics(self, statistics, mask, num_bins: int = POSITION_BINS):
        """Entropy and clip ratio per 10% bin of relative position (paper Fig. 5), as soup/position/<name>/bin_<i>."""
        mode = "train" if self.model.training else "eval"
        names = [name for name in ("entropy", "clip_ratio") if name in statistics]
        sums = torch.stack([position_bin_sums(statistics[name], mask, num_bins) for name in names])
        sums = self.accelerator.reduce(sums, reduction="sum")
        for name, rows in zip(names, sums, strict=True):
            for i, (total, count) in enumerate(rows.tolist()):
                value = total / count if count > 0 else float("nan")
                self._metrics[mode][f"soup/position/{name}/bin_{i}"].append(value)

    # ---------------------------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        # PEFT saves every adapter, the behavior one in a sub-folder. It is not part of the trained model, and its
        # presence makes transformers' resume load only the sub-folder adapters (not the trained one at the root).
        # Mid-window, the snapshot is saved separately (SNAPSHOT_DIR).
        behavior_folder = os.path.join(output_dir or self.args.output_dir, BEHAVIOR_ADAPTER)
        if self.behavior is not None and getattr(self.behavior, "is_peft", False) and os.path.isdir(behavior_folder):
            shutil.rmtree(behavior_folder)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        output_dir = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        # Only mid-window is the snapshot needed: at a window boundary the next batch refreshes it anyway.
        mid_window = self.behavior is not None and self.generation_batch_index % self.args.behavior_refresh_interval != 0
        rank = self.accelerator.process_index
        os.makedirs(output_dir, exist_ok=True)  # another rank may get here before the main process created it
        torch.save({"prefix_generator": self.prefix_generator.get_state()},
                   os.path.join(output_dir, f"soup_rng_state_{rank}.pt"))
        if mid_window:  # every rank: a ZeRO-3 snapshot is gathered collectively; the backend writes on the main process
            self.behavior.save_snapshot(os.path.join(output_dir, SNAPSHOT_DIR))
        if self.args.should_save:
            state = {
                "generation_batch_index": self.generation_batch_index,
                "behavior_refresh_interval": self.args.behavior_refresh_interval,
                "behavior_snapshot": mid_window,
            }
            torch.save(state, os.path.join(output_dir, SOUP_STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, SOUP_STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by SOUPTrainer, so the behavior snapshot and the "
                "refresh counter cannot be restored."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["behavior_refresh_interval"] != self.args.behavior_refresh_interval:
            raise ValueError(
                f"The checkpoint was trained with behavior_refresh_interval={state['behavior_refresh_interval']}, "
                f"this run uses {self.args.behavior_refresh_interval}; resume with the same value."
            )
        self.generation_batch_index = state["generation_batch_index"]
        if state["behavior_snapshot"]:
            self.behavior.load_snapshot(os.path.join(checkpoint, SNAPSHOT_DIR))
        rng_path = os.path.join(checkpoint, f"soup_rng_state_{self.accelerator.process_index}.pt")
        if os.path.exists(rng_path):
            self.prefix_generator.set_state(torch.load(rng_path, weights_only=True)["prefix_generator"])
