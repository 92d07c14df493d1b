"""The "local" behavior backend: a frozen historical copy of the learner inside the training process.

- Full fine-tuning: a second model built fresh from the learner's config and loaded with its weights. It is never a
  ``copy.deepcopy`` of the learner: a model prepared by TRL/accelerate can carry instance-level ``forward`` functions
  that close over the source model, so a deep copy would silently run the learner's weights.
- PEFT: a second adapter named ``"behavior"`` next to the trained one (the same trick TRL uses for its ``"ref"``
  adapter): the base weights are shared, only the adapter is copied.

DeepSpeed ZeRO-3: the full copy is prepared like TRL's reference model (``prepare_deepspeed``), so its parameters are
partitioned across ranks too (PEFT under ZeRO-3 is refused in this release: ``validation.check_local_peft_zero3``).
Every weight copy (refresh, snapshot save and load) gathers one tensor at a time: each rank must take part, in the same
order, and the memory peak is one full tensor. Generation gathers the whole copy like TRL's
``unwrap_model_for_generation`` (or runs with partitioned weights when ``ds3_gather_for_generation=False``); the
scoring forward runs on partitioned weights.

The backend is built from a :class:`~trl_soup.behavior.context.BehaviorContext`, never the trainer. Sampling uses the
learner's own generation config (temperature, top-p, top-k, ...: ``SamplingSettings.generation``). The behavior
log-probs and entropies are read from generate's own forward passes (``SamplingLogprobRecorder``), temperature-scaled
exactly like TRL's ``per_token_logps``; under ZeRO-3 the sampled response is scored by a forward of the frozen copy
instead.
"""

from __future__ import annotations

import copy
import os
import shutil
from contextlib import contextmanager, nullcontext

import torch
from accelerate.utils import is_peft_model

from .._compat import (
    DynamicLayer,
    DynamicSlidingWindowLayer,
    add_fused_lm_head,
    generation_cache_kwargs,
    no_init_weights,
    output_cache,
    pad,
    prepare_deepspeed,
    use_adapter,
)
from ..validation import check_local_peft_zero3
from .base import BehaviorBackend, BehaviorSamples, Scorer, padded_rows
from .context import BehaviorContext
from .prefetch import seeded_rng

BEHAVIOR_ADAPTER = "behavior"
SNAPSHOT_FILE = "behavior_snapshot.pt"


def _clone_state_dict_keeping_ties(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone tensors, keeping tensors that share storage (tied embeddings) shared in the copy."""
    clones: dict[int, torch.Tensor] = {}
    return {k: clones.setdefault(v.data_ptr(), v.detach().clone()) for k, v in state.items()}


def gathered(tensors, enabled: bool, modifier_rank: int | None = None):
    """All-gather ZeRO-3 partitioned ``tensors`` for the duration of the block (a collective: every rank must enter).

    With ``modifier_rank`` set, what that rank writes into the gathered tensors is broadcast and re-partitioned on
    exit; without it, writes are dropped. Tensors that are not ZeRO-3 parameters (buffers, persistent small parameters,
    any tensor when ``enabled`` is False) are left alone.
    """
    if not enabled:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(tensors), modifier_rank=modifier_rank)


def _init_deepspeed_comm() -> None:
    """Make DeepSpeed's communication layer wrap the process group accelerate set up.

    ``zero.Init`` reads the world size from it before initialising it itself; with ``use_cpu`` accelerate starts plain
    ``torch.distributed`` (gloo), so DeepSpeed would count one process and reject the batch sizes.
    ``deepspeed.initialize`` makes the same call a moment later anyway.
    """
    from deepspeed import comm
    from deepspeed.accelerator import get_accelerator

    if not comm.is_initialized():
        comm.init_distributed(dist_backend=get_accelerator().communication_backend_name(), auto_mpi_discovery=False)


@torch.no_grad()
def copy_tensors(pairs, zero3: bool) -> None:
    """``target <- source`` for each ``(source, target)`` pair, one gathered pair at a time under ZeRO-3.

    Every rank gathers the full source and target and writes the same values; rank 0's write is the one re-partitioned
    (``modifier_rank=0``). A target shared by several names (tied embeddings) is written once.
    """
    done: set[int] = set()
    for source, target in pairs:
        if id(target) in done:
            continue
        done.add(id(target))
        with gathered([source], zero3), gathered([target], zero3, modifier_rank=0):
            target.data.copy_(source.data)


class SamplingLogprobRecorder:
    """Forward hook on the model ``generate`` runs: log pi_behavior and entropy of every sampled token, read from the
    logits ``generate`` computes anyway, so no scoring forward is needed afterwards.

    Each forward call of ``generate`` yields the distribution of the next token, ``log_softmax(logits / temperature)``
    (the same temperature scaling as TRL's ``per_token_logps``; logits processors such as top-p never enter it). The
    token drawn from it is the last input id of the following call; the last token of all is read from the output.
    Only one ``(batch, vocab)`` distribution is held at a time. Valid when every forward call appends one token to
    every row, which holds for plain ``generate`` (not for ZeRO-3's ``synced_gpus``, whose finished ranks keep calling
    forward).
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.pending: torch.Tensor | None = None  # (B, V) log-probs of the token being sampled
        self.logps: list[torch.Tensor] = []
        self.entropies: list[torch.Tensor] = []

    def __call__(self, module, args, kwargs, output):
        if self.pending is not None:
            self._record(kwargs["input_ids"][:, -1])
        logps = torch.log_softmax(output.logits[:, -1].float() / self.temperature, dim=-1)
        self.entropies.append(-(logps.exp() * logps).sum(-1))  # H = -sum_v p log p
        self.pending = logps

    def _record(self, tokens: torch.Tensor) -> None:
        self.logps.append(self.pending.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
        self.pending = None

    def result(self, completion_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(B, C)`` log-probs and entropies for the ``(B, C)`` tokens ``generate`` returned, or None when the forward
        calls seen do not line up one to one with those tokens."""
        if self.pending is not None:
            self._record(completion_ids[:, -1])
        if len(self.logps) != completion_ids.size(1):
            return None  # generate did not run one forward per token (a patched or assisted generate): score instead
        return torch.stack(self.logps, dim=1), torch.stack(self.entropies, dim=1)


def shared_prompt_rows(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Distinct rows of a left-padded prompt batch: ``(first, inverse)`` with ``prompt_ids[first][inverse] ==
    prompt_ids`` (and the same for the mask), or None when every row is distinct (nothing to share).

    GRPO batches repeat each prompt ``num_generations`` times, so the behavior copy's prompt prefill can run once per
    distinct prompt and be expanded to every row.
    """
    rows = torch.cat([prompt_ids, prompt_mask], dim=1)
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if distinct.size(0) == rows.size(0):
        return None
    first = torch.full((distinct.size(0),), rows.size(0), dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, inverse, torch.arange(rows.size(0), device=rows.device), reduce="amin")
    return first, inverse


@torch.no_grad()
def shared_prompt_cache(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """KV cache of every prompt but its last position, computed once per distinct prompt and expanded to every row.

    ``generate(input_ids=prompt_ids, attention_mask=prompt_mask, past_key_values=cache)`` then runs its prefill on the
    last prompt position only. Position ids follow ``generate``'s rule for left padding (``cumsum(mask) - 1``, 0 on
    padding), so the cache holds the keys and values ``generate``'s own prefill would compute. Returns None when
    there is nothing to share (all prompts distinct, or one-token prompts), or the model returns no plain key/value
    cache.
    """
    shared = shared_prompt_rows(prompt_ids, prompt_mask)
    if shared is None or prompt_ids.size(1) < 2:
        return None
    first, inverse = shared
    ids, mask = prompt_ids[first, :-1], prompt_mask[first, :-1]
    position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    try:
        output = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
    except TypeError:  # a forward without logits_to_keep would compute every position's logits: not worth it
        return None
    cache = output_cache(output)
    layers = getattr(cache, "layers", None)
    # Only plain key/value caches are expanded row by row; anything else (no cache because of gradient checkpointing
    # in train mode, recurrent or quantized layers) gets generate's own prefill.
    if not layers or not all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers):
        return None
    cache.batch_select_indices(inverse)
    return cache


def adapter_twin_name(name: str, adapter: str, twin: str) -> str | None:
    """The name of ``twin``'s copy of the PEFT tensor ``name`` of ``adapter``, or None if ``name`` is not
    ``adapter``'s.

    PEFT puts the adapter name as one component of the tensor name, in the middle (``...lora_A.default.weight``,
    ``...lora_magnitude_vector.default.weight``, ``lm_head.modules_to_save.default.weight``) or at the end
    (``...lora_embedding_A.default``, ``...trainable_tokens_delta.default``): components are compared whole.
    """
    parts = name.split(".")
    if adapter not in parts:
        return None
    return ".".join(twin if part == adapter else part for part in parts)


def adapter_twin_pairs(model, adapter: str, twin: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(tensor of adapter, same tensor of twin)`` for every parameter of the PEFT adapter ``adapter``.

    Raises ValueError when a trainable parameter has no twin (it would be trained but never copied into the behavior
    copy, whose log-probs would then drift from the learner's after every refresh), or when ``adapter`` has none.
    """
    params = dict(model.named_parameters())
    pairs, orphans = [], []
    for name, param in params.items():
        if twin in name.split("."):
            continue
        twin_name = adapter_twin_name(name, adapter, twin)
        if twin_name is not None and twin_name in params:
            pairs.append((param, params[twin_name]))
        elif param.requires_grad:
            orphans.append(name)
    if orphans:
        raise ValueError(
            f"These trainable parameters have no copy in the {twin!r} PEFT adapter, so the behavior copy could not "
            f"follow them: {orphans[:8]}{' ...' if len(orphans) > 8 else ''}. Train only PEFT adapter tensors (LoRA, "
            "DoRA, modules_to_save, trainable_token_indices) with behavior_backend='local', or use "
            "behavior_backend='vllm_server'."
        )
    if not pairs:
        raise ValueError(f"No parameters of the PEFT adapter {adapter!r} were found to copy.")
    return pairs


@contextmanager
def eval_mode(module: torch.nn.Module):
    """Run the block with every submodule of ``module`` in eval mode (no dropout), then restore each one's mode.

    The behavior policy is a fixed distribution: its samples and log-probs must not depend on dropout, whatever
    ``disable_dropout`` says and whichever adapter is active (PEFT's LoRA dropout belongs to each adapter).
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def cast_output_head_to_fp32(model) -> None:
    """Give a fresh copy of the learner TRL's ``cast_lm_head_to_fp32``: a float32 output head fed float32 hidden
    states.

    TRL casts the learner's head when the trainer is built and patches its forward on the instance, so a model rebuilt
    from the learner's config and weights does not inherit it (its head would get float32 weights and bf16 inputs). A
    head tied to the input embedding is the same tensor: the embedding's output is cast back to the dtype of the rest
    of the model, read at each call so it follows a later cast of the body.
    """
    head = model.get_output_embeddings()
    head.float()
    head.register_forward_pre_hook(
        lambda module, args: tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    )
    embedding = model.get_input_embeddings()
    if embedding.weight is head.weight or getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        embedding.float()
        body = next(p for p in model.parameters() if p is not head.weight and p is not embedding.weight)
        embedding.register_forward_hook(lambda module, args, output: output.to(body.dtype))


def behavior_adapter_name(member: int) -> str:
    """The PEFT adapter of pool member ``member``: ``"behavior"`` for the first (the only one without a pool), then
    ``"behavior_1"``, ``"behavior_2"``, ..."""
    return BEHAVIOR_ADAPTER if member == 0 else f"{BEHAVIOR_ADAPTER}_{member}"


def cut_at_first_eos(completion_ids: torch.Tensor, eos_token_ids, pad_token_id: int):
    """Completions ``(B, L)`` kept up to and including their first EOS: the ids with padding after it, the mask, and
    whether each row ended with EOS."""
    device = completion_ids.device
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=device))
    has_eos = is_eos.any(dim=1)
    length = completion_ids.size(1)
    eos_idx = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, length, dtype=torch.long))
    mask = (torch.arange(length, device=device).unsqueeze(0) <= eos_idx.unsqueeze(1)).long()
    return completion_ids.masked_fill(mask == 0, pad_token_id), mask, has_eos


class LocalBehaviorBackend(BehaviorBackend, Scorer):
    """Frozen copy of the learner in the training process (full model, or a ``"behavior"`` PEFT adapter), built from a
    :class:`~trl_soup.behavior.context.BehaviorContext`.

    ``member``: the slot of this copy in a behavior pool (:class:`trl_soup.behavior.pool.BehaviorPool`); each member is
    a full copy of its own, or a PEFT adapter of its own (:func:`behavior_adapter_name`). ``adapter_name`` overrides
    that name (the frozen scorer of the dataset prefix source is such a copy, never refreshed). ``model``: a frozen
    model used as it is instead of a copy of the learner (a scorer loaded from elsewhere, :class:`NamedScorer`).
    """

    def __init__(self, context: BehaviorContext, member: int = 0, adapter_name: str | None = None, model=None):
        self.context = context
        self.adapter_name = adapter_name or behavior_adapter_name(member)
        learner = context.learner()
        self.is_peft = model is None and is_peft_model(learner)
        self.zero3 = model is None and context.zero3
        self._engine = None  # the DeepSpeed engine around the snapshot under ZeRO-3 (it owns the gathering hooks)
        # Behavior log-probs come from generate's own forward passes, except where those cannot equal the loss
        # forward's: under ZeRO-3 (synced_gpus runs forwards that append no token) and in reduced precision (the loss
        # forward runs under the accelerator's autocast with TRL's fused LM head; generate's incremental bf16 forwards
        # differ from it by about 1e-3 in log-prob). There a scoring forward through TRL's own
        # _get_per_token_logps_and_entropies computes them exactly as the loss does (docs/deviations.md).
        args = context.args
        reduced_precision = args.bf16 or args.fp16 or learner.dtype in (torch.bfloat16, torch.float16)
        self.score_after_sampling = self.zero3 or reduced_precision
        check_local_peft_zero3("local", self.is_peft, self.zero3)
        if model is not None:
            self._adopt(model)
        elif self.is_peft:
            self._add_twin_adapter(learner)
        elif self.zero3:
            self._build_partitioned_snapshot(learner)
        else:
            self._build_snapshot(learner)

    def _add_twin_adapter(self, learner) -> None:
        """PEFT: a second adapter next to the trained one, frozen; the base weights are shared."""
        trained = learner.active_adapter
        if not isinstance(trained, str):
            raise ValueError(f"SOUP's local behavior backend needs one active PEFT adapter, got {trained!r}.")
        if self.adapter_name in learner.peft_config:
            raise ValueError(
                f"The PEFT model already has an adapter named {self.adapter_name!r}; SOUP reserves that name for "
                "the behavior copy."
            )
        learner.add_adapter(self.adapter_name, copy.deepcopy(learner.peft_config[trained]))
        self._pairs = adapter_twin_pairs(learner, trained, self.adapter_name)  # (trained, behavior) tensors
        for _, behavior in self._pairs:
            behavior.requires_grad_(False)
        self.snapshot = None

    def _build_partitioned_snapshot(self, learner) -> None:
        """ZeRO-3, like TRL's reference model: built partitioned (zero.Init through _from_config when the HF DeepSpeed
        config is active), wrapped by prepare_deepspeed, then filled from the learner."""
        _init_deepspeed_comm()
        with no_init_weights():
            snapshot = type(learner)._from_config(copy.deepcopy(learner.config), dtype=learner.dtype)
        self._prepare_snapshot(snapshot)
        self._engine = prepare_deepspeed(snapshot, self.context.accelerator)
        self.snapshot = snapshot
        self.refresh()

    def _build_snapshot(self, learner) -> None:
        """A second model built from the learner's config and loaded with its weights (never a deep copy)."""
        with no_init_weights():
            snapshot = type(learner)(copy.deepcopy(learner.config))
        snapshot.load_state_dict(_clone_state_dict_keeping_ties(learner.state_dict()), assign=True, strict=True)
        self._adopt(snapshot)
        self._follow_buffers(learner)  # non-persistent buffers (e.g. rotary) follow the learner's

    def _adopt(self, model) -> None:
        """``model`` becomes the frozen copy, on the training device (not the learner's: under DeepSpeed ZeRO-1/2 the
        learner is still on the CPU here, the engine moves it at train time)."""
        model.to(self.context.device)
        self._prepare_snapshot(model)
        self.snapshot = model

    def _prepare_snapshot(self, snapshot) -> None:
        snapshot.requires_grad_(False)
        snapshot.eval()
        snapshot.generation_config = copy.deepcopy(self.context.sampling.generation()[1])
        cast = self.context.args.cast_lm_head_to_fp32
        if cast:
            cast_output_head_to_fp32(snapshot)
        # The same scoring head TRL adds to the learner (temperature-scaled log-probs and entropies), added to the
        # fresh copy rather than inherited from it.
        add_fused_lm_head(
            snapshot,
            temperature=self.context.sampling.temperature,
            cast_lm_head_to_fp32=cast,
            outputs=("log_probs", "entropy"),
        )

    # ------------------------------------------------------------------------------------------------ weights
    def _snapshot_tensors(self) -> dict[str, torch.Tensor]:
        """The behavior copy's weights by name (parameters kept as parameters, partitioned under ZeRO-3)."""
        if self.is_peft:
            return {str(i): behavior for i, (_, behavior) in enumerate(self._pairs)}
        return self.snapshot.state_dict(keep_vars=True)

    @torch.no_grad()
    def refresh(self) -> None:
        if self.is_peft:
            copy_tensors(self._pairs, self.zero3)
            return
        learner = self.context.learner()
        source = learner.state_dict(keep_vars=True)
        target = self._snapshot_tensors()
        if source.keys() != target.keys():
            raise RuntimeError(
                f"The learner and the behavior copy have different weights: {sorted(source.keys() ^ target.keys())}."
            )
        if not self.zero3:
            # DeepSpeed (bf16 / fp16) casts the learner only when training starts, after this copy was built: each
            # tensor follows its learner twin's dtype, so the copy samples in the learner's precision (a float32 LM
            # head next to a bf16 body included, cast_lm_head_to_fp32) and holds no float32 weights next to bf16 ones.
            for name, tensor in target.items():
                if tensor.dtype != source[name].dtype:
                    tensor.data = tensor.data.to(source[name].dtype)
        copy_tensors(((source[name], target[name]) for name in target), self.zero3)
        self._follow_buffers(learner)

    @torch.no_grad()
    def _follow_buffers(self, learner) -> None:
        """Give the snapshot the learner's buffers, non-persistent ones included, in the learner's dtype.

        A fresh model computes its rotary ``inv_freq`` in float32, while a learner cast with ``.to(torch.bfloat16)``
        holds a bf16-rounded one (about 4e-4 off): without this, a bf16 snapshot's log-probs differ from the
        learner's by about 1e-3 at identical weights. Buffers are never partitioned by ZeRO-3.
        """
        buffers = dict(self.snapshot.named_buffers())
        for name, buffer in learner.named_buffers():
            if name in buffers:
                buffers[name].data = buffer.detach().to(buffers[name].device, copy=True)

    def save_snapshot(self, directory: str) -> None:
        """Called on every rank (gathering a ZeRO-3 snapshot is a collective); only the main process writes."""
        write = self.context.args.should_save
        state = {}
        for name, tensor in self._snapshot_tensors().items():
            with gathered([tensor], self.zero3):
                if write:
                    state[name] = tensor.detach().to("cpu", copy=True)
        if not write:
            return
        os.makedirs(directory, exist_ok=True)
        if self.is_peft:
            state = {"adapter": [state[str(i)] for i in range(len(self._pairs))]}
        else:
            state = {"model": state}
        torch.save(state, os.path.join(directory, SNAPSHOT_FILE))

    def clean_saved_model(self, output_dir: str) -> None:
        """PEFT saves every adapter, the behavior one in a sub-folder: it is not part of the trained model, and its
        presence makes transformers' resume load only the sub-folder adapters (not the trained one at the root).
        Mid-window the snapshot is saved separately (:meth:`save_snapshot`)."""
        folder = os.path.join(output_dir, self.adapter_name)
        if self.is_peft and os.path.isdir(folder):
            shutil.rmtree(folder)

    @torch.no_grad()
    def load_snapshot(self, directory: str) -> None:
        state = torch.load(os.path.join(directory, SNAPSHOT_FILE), map_location="cpu", weights_only=True)
        target = self._snapshot_tensors()
        if self.is_peft:
            tensors = state["adapter"]
            if len(tensors) != len(self._pairs):
                raise ValueError(
                    f"Saved behavior adapter has {len(tensors)} tensors, this model's adapter has {len(self._pairs)}."
                )
            saved = {str(i): tensor for i, tensor in enumerate(tensors)}
        else:
            saved = state["model"]
            if saved.keys() != target.keys():
                raise ValueError(
                    f"The saved behavior snapshot does not match this model: {sorted(saved.keys() ^ target.keys())}."
                )
        copy_tensors(((saved[name], target[name]) for name in target), self.zero3)

    # ------------------------------------------------------------------------------------------------ sampling
    @contextmanager
    def _model(self, for_generation: bool, generation_kwargs: dict | None = None):
        """The behavior policy as a callable model: the snapshot, or the learner with the behavior adapter active."""
        context = self.context
        if not self.is_peft:
            if for_generation and self._engine is not None:
                # ZeRO-3: gather the whole copy for generation (as TRL does for the learner), so each rank decodes on
                # its own; with ds3_gather_for_generation=False every decoding step gathers layer by layer instead.
                with (
                    context.unwrapped_for_generation(self._engine, generation_kwargs) as unwrapped,
                    eval_mode(unwrapped),
                ):
                    yield unwrapped
            else:
                with eval_mode(self.snapshot):  # scoring under ZeRO-3: DeepSpeed's hooks gather each layer
                    yield self.snapshot
            return
        if for_generation:
            with (
                context.unwrapped_for_generation(context.generation_model(), generation_kwargs) as unwrapped,
                use_adapter(unwrapped, self.adapter_name),
                eval_mode(unwrapped),
            ):
                yield unwrapped
        else:
            learner = context.learner()
            with use_adapter(learner, self.adapter_name), eval_mode(learner):
                yield context.model()

    def _pad_prompts(self, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        sampling, device = self.context.sampling, self.context.device
        tensors = [torch.tensor(ids) for ids in prompt_ids]
        multiple = sampling.pad_to_multiple_of
        ids = pad(tensors, padding_value=sampling.pad_token_id, padding_side="left", pad_to_multiple_of=multiple)
        mask = pad(
            [torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left", pad_to_multiple_of=multiple
        )
        return ids.to(device), mask.to(device)

    @torch.no_grad()
    def score(self, prompt_ids, completion_ids):
        """The :class:`~trl_soup.behavior.base.Scorer` interface: a forward of the frozen copy."""
        p_ids, p_mask = self._pad_prompts(prompt_ids)
        c_ids, c_mask = padded_rows(completion_ids, self.context.sampling.pad_token_id)
        return self._score_padded(p_ids, p_mask, c_ids.to(self.context.device), c_mask.to(self.context.device))

    def _score_padded(self, p_ids, p_mask, c_ids, c_mask):
        with self._model(for_generation=False) as model:
            logps, entropies, _ = self.context.score(
                model,
                torch.cat([p_ids, c_ids], dim=1),
                torch.cat([p_mask, c_mask], dim=1),
                c_ids.size(1),
                batch_size=self.context.args.per_device_train_batch_size,
                compute_entropy=True,
            )
        return logps, entropies

    def _generate(self, p_ids, p_mask, max_new_tokens: int, seed: int):
        """``generate`` with the learner's sampling settings under ``seed``; returns its output and the recorder of
        the sampling forwards' log-probs (None where they cannot equal the loss forward's: then the response is
        scored after sampling)."""
        kwargs, config = self.context.sampling.generation()
        generation_config = copy.copy(config)
        generation_config.max_new_tokens = max_new_tokens
        generation_kwargs = {**kwargs, "max_new_tokens": max_new_tokens}
        recorder = None if self.score_after_sampling else SamplingLogprobRecorder(self.context.sampling.temperature)
        with (
            self._model(for_generation=True, generation_kwargs=generation_kwargs) as model,
            seeded_rng(seed, self.context.device),
        ):
            # The G samples of a prompt share its prefill: computed once per distinct prompt (not under ZeRO-3, where
            # a forward is a collective and ranks could disagree on whether to run it, nor with a cache_implementation,
            # which generate builds itself and refuses next to a given cache).
            cache = None
            if not self.zero3 and generation_config.cache_implementation is None:
                cache = shared_prompt_cache(model, p_ids, p_mask)
            hooked = model.get_base_model() if self.is_peft else model  # the module whose forward returns logits
            handle = None if recorder is None else hooked.register_forward_hook(recorder, with_kwargs=True)
            try:
                out = model.generate(
                    input_ids=p_ids,
                    attention_mask=p_mask,
                    generation_config=generation_config,
                    **generation_cache_kwargs(cache),
                )
            finally:
                if handle is not None:
                    handle.remove()
        return out, recorder

    @torch.no_grad()
    def sample(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        generation_batch_index: int,
        stream: int = 0,
        rows: list[dict] | None = None,
    ) -> BehaviorSamples:
        p_ids, p_mask = self._pad_prompts(prompt_ids)
        # The behavior stream is seeded per (run seed, generation batch, rank, stream): the sample does not depend on
        # when it is drawn (prefetching, resuming), and drawing it leaves the learner's RNG stream untouched.
        seed = self.context.sampling_seed(generation_batch_index, stream)
        out, recorder = self._generate(p_ids, p_mask, max_new_tokens, seed)
        # Keep tokens up to and including the first EOS (the same rule as TRL's transformers path).
        sampling = self.context.sampling
        c_ids, c_mask, has_eos = cut_at_first_eos(
            out[:, p_ids.size(1) :], sampling.eos_token_ids, sampling.pad_token_id
        )
        recorded = None if recorder is None else recorder.result(out[:, p_ids.size(1) :])
        if recorded is not None:
            logps, entropies = recorded
        else:
            logps, entropies = self._score_padded(p_ids, p_mask, c_ids, c_mask)
        return BehaviorSamples(
            completion_ids=c_ids,
            mask=c_mask,
            per_token_logps=logps * c_mask,
            entropies=entropies * c_mask,
            ended_with_eos=has_eos,
        )
