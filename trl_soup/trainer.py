"""SOUPTrainer: TRL's GRPOTrainer with relay sampling from a frozen historical copy (arXiv 2601.21476).

Glue only: the math lives in :mod:`trl_soup.core`, the historical copy in :mod:`trl_soup.behavior`.
"""

from __future__ import annotations

import inspect
import os
import shutil
import time

import torch

from trl import GRPOTrainer

from ._compat import PREFIX_CHECKPOINT_DIR, disable_gradient_checkpointing
from .behavior import build_behavior_backend
from .behavior.local import BEHAVIOR_ADAPTER
from .config import SOUPConfig
from .core import (
    build_prefix_mask,
    clipped_token_mask,
    mixed_old_per_token_logps,
    position_bin_sums,
    segment_means,
    segment_sums,
)
from .truncation import behavior_decode_budget, compute_prefix_lengths

SOUP_STATE_FILE = "soup_state.pt"
POSITION_BINS = 10  # paper Fig. 5: 10% bins of relative token position
SNAPSHOT_DIR = "behavior_snapshot"  # inside a checkpoint, written only mid-window


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
      skips it when generation and optimisation are aligned, which would turn the prefix ratio into 1).
    - ``_generate_single_turn``: relay sampling (behavior sample, truncate, continue with TRL's own generation).
    - ``_compute_loss``: swaps in the mixed denominator, then logs ``soup/`` statistics split by segment.
    - ``_get_per_token_logps_and_entropies``: only records the values of the loss forward for those statistics.
    - ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: save and restore the refresh counter, the
      truncation RNG and, mid-window, the behavior snapshot.
    """

    _tag_names = ["trl", "grpo", "soup"]

    def __init__(self, model, reward_funcs=None, args: SOUPConfig | None = None, *pargs, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = SOUPConfig(f"{model_name.split('/')[-1]}-SOUP")
        if not isinstance(args, SOUPConfig):
            raise TypeError(f"SOUPTrainer needs a SOUPConfig, got {type(args).__name__}.")
        bound = inspect.signature(GRPOTrainer.__init__).bind_partial(None, model, reward_funcs, args, *pargs, **kwargs)
        for option in ("rollout_func", "tools", "environment_factory"):
            if bound.arguments.get(option):  # None and an empty tool list both mean "not used"
                raise ValueError(
                    f"{option} cannot be used with SOUPTrainer: relay sampling writes each completion with the "
                    f"behavior copy and the current policy, a single-turn plain generation. Allowed value: None."
                )
        if args.cast_lm_head_to_fp32:
            raise ValueError(
                "cast_lm_head_to_fp32=True is not supported by SOUPTrainer in this release (the behavior copy would "
                "not share the cast LM head). Allowed value: False."
            )
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        plugin = self.accelerator.state.deepspeed_plugin
        if self.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3):
            raise ValueError(
                "SOUPTrainer does not support FSDP or DeepSpeed ZeRO-3 in this release (the accelerate config asks for "
                "it): the behavior copy and its refresh need unsharded parameters. Use DDP or DeepSpeed ZeRO-1/2."
            )
        if self._is_vlm:
            raise ValueError("SOUPTrainer supports text-only models in this release; got a vision-language processor.")

        self.generation_batch_index = 0  # generation batches produced so far in training (the refresh counter)
        self._relay_plan: dict | None = None  # set for the duration of one relay generation
        self._relay_record: dict | None = None  # what _generate_single_turn did, read back in the same call stack
        self._soup_capture: dict | None = None
        self.last_relay_record: dict | None = None
        self.prefix_generator = torch.Generator().manual_seed(args.seed + self.accelerator.process_index)
        T = args.behavior_refresh_interval
        # T = 1 never produces a relay batch: no behavior copy is built at all.
        self.behavior = build_behavior_backend(args.behavior_backend, self) if T > 1 else None

    # ---------------------------------------------------------------------------------------------- generation
    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        age = self.generation_batch_index % self.args.behavior_refresh_interval
        relay = mode == "train" and self.behavior is not None and age > 0
        if mode == "train" and self.behavior is not None and age == 0:
            start = time.perf_counter()
            self.behavior.refresh()
            self._metrics[mode]["soup/refresh_time"].append(time.perf_counter() - start)
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

        if relay and output.get("old_per_token_logps") is None:
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
        samples = self.behavior.sample(prompt_ids, decode_budget)
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
        budgets = self.max_completion_length - prefix_lengths
        # A prefix that is the whole behavior response (it ended with EOS), or that leaves no budget, is final.
        finished = ((prefix_lengths == lengths) & samples.ended_with_eos.cpu()) | (budgets <= 0)
        behavior_ids = samples.completion_ids.cpu()
        prefixes = [behavior_ids[i, : prefix_lengths[i]].tolist() for i in range(len(prompt_ids))]
        rows = [i for i in range(len(prompt_ids)) if not finished[i]]

        continuations: dict[int, list[int]] = {}
        # Under ZeRO-3 / FSDP, generation gathers sharded weights collectively: every rank must take part even when
        # none of its rows needs a continuation, so such a rank decodes one throw-away token.
        collective = self.is_deepspeed_enabled or self.is_fsdp_enabled
        if rows or collective:
            max_budget = int(budgets[rows].max()) if rows else 1
            saved = self.generation_config.max_new_tokens, self.generation_kwargs.get("max_new_tokens")
            self.generation_config.max_new_tokens = max_budget
            self.generation_kwargs["max_new_tokens"] = max_budget
            try:
                requests = [list(prompt_ids[i]) + prefixes[i] for i in rows] or [list(prompt_ids[0])]
                cont_ids, _ = super()._generate_single_turn(requests, None, multimodal_fields, 1, has_tool_images)
            finally:
                self.generation_config.max_new_tokens, self.generation_kwargs["max_new_tokens"] = saved
            for i, ids in zip(rows, cont_ids[: len(rows)], strict=True):
                continuations[i] = list(ids)[: int(budgets[i])]  # per-row budget max_completion_length - len(prefix)

        completion_ids = [prefixes[i] + continuations.get(i, []) for i in range(len(prompt_ids))]
        self._relay_record = {
            "prefix_lengths": prefix_lengths,
            "prefix_logps": [samples.per_token_logps[i, : prefix_lengths[i]].float() for i in range(len(prompt_ids))],
            "behavior_lengths": lengths,
            "no_continuation": finished,
            # kept for inspection and tests: the full responses the behavior copy sampled
            "behavior_completion_ids": [behavior_ids[i, : lengths[i]].tolist() for i in range(len(prompt_ids))],
        }
        return completion_ids, None

    # ---------------------------------------------------------------------------------------------- loss
    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if self._soup_capture is not None:
            self._soup_capture["per_token_logps"] = result[0].detach()
            self._soup_capture["entropies"] = None if result[1] is None else result[1].detach()
        return result

    def _compute_loss(self, model, inputs):
        prefix_mask = inputs["prefix_mask"]
        completion_mask = inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        if old is not None:
            # Paper Eq. 5: the ratio's denominator is pi_behavior on prefix tokens and pi_old on continuation tokens.
            denominator = mixed_old_per_token_logps(prefix_mask, inputs["behavior_per_token_logps"], old)
            inputs = {**inputs, "old_per_token_logps": denominator}
        elif bool(prefix_mask.any()):
            raise RuntimeError("A relay batch reached the loss without old_per_token_logps.")

        self._soup_capture = {}
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
        torch.save({"prefix_generator": self.prefix_generator.get_state()},
                   os.path.join(output_dir, f"soup_rng_state_{rank}.pt"))
        if mid_window and self.args.should_save:
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
