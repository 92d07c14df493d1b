"""SOUPConfig's rules as small pure functions, one home per rule, callable without building a TrainingArguments.

Each rule raises ``ValueError`` with a message that names the option and the allowed values. Rules on one option are
the table :data:`FIELD_RULES` (option -> what it accepts), applied by :func:`check_field` and :func:`validate_fields`
to plain values. Rules across options read ``args``: any object with the config's attribute names (a SOUPConfig, or a
``types.SimpleNamespace`` in tests), or take the values they need. ``SOUPConfig.__post_init__`` calls them in its
order (the first refusal is the one reported); ``checks.py`` and the vllm_server backend call the rules they share
with it from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .pool import available_pool_samplings
from .refresh import available_refresh_policies
from .server_auth import check_server_address, client_token
from .sources import available_prefix_sources, source_names
from .truncation import available_prefix_strategies

# Backends for the behavior policy (trl_soup.behavior).
BEHAVIOR_BACKENDS = ("local", "vllm_server")
BEHAVIOR_REFRESH_METHODS = ("disk", "lora", "nccl")
# Options of the vllm_server backend (its address, its patience, its refresh, what it is asked for), and of the
# truncation strategies, that another choice ignores.
SERVER_ADDRESS_FIELDS = ("behavior_server_base_url", "behavior_server_host", "behavior_server_port")
SERVER_WAIT_FIELDS = ("behavior_server_timeout", "behavior_server_connect_timeout", "behavior_server_max_retries")
SERVER_REFRESH_FIELDS = ("behavior_refresh_method", "behavior_server_group_port", "behavior_refresh_dir")
SERVER_FIELDS = SERVER_ADDRESS_FIELDS + SERVER_WAIT_FIELDS + SERVER_REFRESH_FIELDS + ("prefix_entropy_logprobs",)
STRATEGY_FIELDS = ("prefix_ratio", "prefix_entropy_top_k")
REFRESH_POLICY_FIELDS = ("behavior_max_staleness", "behavior_refresh_min_interval")
# The largest behavior pool: every member is allocated when the run starts (a full copy with the local backend) and
# logs its own metrics; K = 2000 allocated 4.8 GB on a 0.5M toy model. The paper keeps one copy.
MAX_POOL_SIZE = 32
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
POOL_FIELDS = ("behavior_pool_sampling",)
DATASET_SOURCE_FIELDS = (
    "prefix_dataset_column",
    "prefix_logps_column",
    "prefix_scorer_model",
    "prefix_dataset_fallback",
)
PREFIX_DATASET_FALLBACKS = ("on_policy", "behavior")

# TRL 1.16's loss types. Each is built from log r_t = log pi_theta - log(denominator); SOUP swaps in the mixed
# denominator of Eq. 5, so token-level losses weight each token by the ratio of the policy that wrote it, and
# sequence-level weights (importance_sampling_level="sequence", luspo, vespo) are the geometric mean of those token
# ratios: the trajectory's length-normalised likelihood ratio against the policies that wrote it (docs/equations.md).
LOSS_TYPES = ("dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo")

# ------------------------------------------------------------------------------------ what one option accepts


@dataclass(frozen=True)
class Choice:
    """One of ``allowed``: a tuple, or a function giving a registry's names (read at each check)."""

    allowed: tuple | Callable[[], list[str]]
    refusal: str = "is not supported"
    after: str = ""  # said after the allowed values

    def __call__(self, name: str, value: Any) -> None:
        allowed = self.allowed() if callable(self.allowed) else self.allowed
        if value not in allowed:
            raise ValueError(f"{name}={value!r} {self.refusal}. Allowed values: {list(allowed)}{self.after}.")


def registered(names: Callable[[], list[str]], kind: str, register: str) -> Choice:
    """A name of a registry: ``names()`` lists them, ``trl_soup.<register>`` adds more."""
    return Choice(names, f"is not a registered {kind}", f" (register more with trl_soup.{register})")


@dataclass(frozen=True)
class Int:
    """An integer (a bool is none) in ``[minimum, maximum]``; no upper bound when ``maximum`` is None."""

    minimum: int
    maximum: int | None = None
    note: str = ""  # said after the bounds, e.g. the unit

    def __call__(self, name: str, value: Any) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < self.minimum
            or (self.maximum is not None and value > self.maximum)
        ):
            bounded = self.maximum is not None
            allowed = f"an integer in [{self.minimum}, {self.maximum}]" if bounded else f"an integer >= {self.minimum}"
            raise ValueError(f"{name}={value!r} is invalid: it must be {allowed}{self.note}.")


@dataclass(frozen=True)
class Number:
    """An int or float (a bool is none) for which ``accepts(value)`` holds; None too when ``optional``."""

    allowed: str  # how the message says what is accepted, e.g. "a number in [0, 1]"
    accepts: Callable[[float], bool]
    optional: bool = False

    def __call__(self, name: str, value: Any) -> None:
        if self.optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.accepts(value):
            raise ValueError(f"{name}={value!r} is invalid: it must be {self.allowed}.")


@dataclass(frozen=True)
class Flag:
    """True or False (None too when ``optional``); ``allowed`` is how the message lists them."""

    allowed: str = "True, False"
    optional: bool = False

    def __call__(self, name: str, value: Any) -> None:
        if not isinstance(value, bool) and not (self.optional and value is None):
            raise ValueError(f"{name}={value!r} is invalid. Allowed values: {self.allowed}.")


def check_url(name: str, value: Any) -> None:
    """None, or a URL that starts with http:// or https://."""
    if value is not None and not str(value).startswith(("http://", "https://")):
        raise ValueError(f"{name}={value!r} is invalid: it must start with http:// or https://.")


def is_local_path(value: str) -> bool:
    """Whether a model name can only be a local path: absolute, relative to . / .. / ~, or deeper than a Hub id's
    org/name."""
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1 or os.sep != "/" and os.sep in value


def check_model_path(name: str, value: Any) -> None:
    """None, a Hub model id, or a path where a directory is."""
    if isinstance(value, str) and is_local_path(value) and not os.path.isdir(os.path.expanduser(value)):
        raise ValueError(
            f"{name}={value!r} is a path, and no directory is there. Allowed values: a local model "
            "directory, a Hub model id (org/name), or None (the initial policy scores the references)."
        )


def parse_json_option(name: str, value: Any) -> Any:
    """``value`` itself, or the object a JSON string (from the command line) stands for."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"{name}={value!r} is not valid JSON.") from None


def check_source_weights(name: str, value: Any) -> None:
    """None, or a dict of registered prefix sources to weights >= 0 with a positive sum (already parsed)."""
    if value is None:
        return
    known = available_prefix_sources()
    valid = (
        isinstance(value, dict)
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value.values())
    )
    if not valid or sum(value.values()) <= 0 or not set(value) <= set(known):
        raise ValueError(
            f"{name}={value!r} is invalid: it must map prefix sources ({known}) to weights "
            ">= 0 with a positive sum, e.g. {'behavior': 0.5, 'dataset': 0.5}."
        )


def check_completion_budget(name: str, value: Any) -> None:
    """max_completion_length: SOUP's continuation budget is max_completion_length - len(prefix)."""
    if value is None or value < 1:
        raise ValueError(
            f"{name}={value!r} is invalid for SOUP: the continuation budget "
            "is max_completion_length - len(prefix), so it must be an integer >= 1."
        )


_TCP_PORT = " (a TCP port)"
_OPTIONAL_NUMBER = Number("a number >= 0, or None", lambda v: not v < 0, optional=True)  # None: off
_SECONDS = Number("a number of seconds > 0", lambda v: v > 0)

# Option -> what it accepts: the rules on one value each, in the order SOUPConfig checks them.
FIELD_RULES: dict[str, Callable[[str, Any], None]] = {
    "prefix_strategy": registered(available_prefix_strategies, "strategy", "register_prefix_strategy"),
    "prefix_ratio": Number("a number in [0, 1]", lambda v: 0.0 <= float(v) <= 1.0),
    "prefix_entropy_top_k": Int(1),
    "behavior_refresh_interval": Int(1, note=" (T, in generation batches; 1 means plain on-policy DAPO)"),
    "behavior_refresh_policy": registered(available_refresh_policies, "policy", "register_refresh_policy"),
    "behavior_max_staleness": Number("a number >= 0 (nats)", lambda v: v >= 0),
    "behavior_refresh_min_interval": Int(1, note=" (generation batches; T bounds it above)"),
    "behavior_pool_size": Int(
        1,
        MAX_POOL_SIZE,
        note=" (snapshots in the behavior pool, each allocated at start and logged; 1 is the paper's one copy)",
    ),
    "behavior_pool_sampling": registered(available_pool_samplings, "rule", "register_pool_sampling"),
    "behavior_backend": Choice(BEHAVIOR_BACKENDS),
    "behavior_refresh_method": Choice(BEHAVIOR_REFRESH_METHODS),
    "behavior_server_port": Int(1, 65535, note=_TCP_PORT),
    "behavior_server_group_port": Int(1, 65535, note=_TCP_PORT),
    "behavior_server_max_retries": Int(0),
    "prefix_entropy_logprobs": Int(1),
    "behavior_prefetch": Int(0, note=" (generation batches sampled ahead; 0 disables prefetching)"),
    "old_logps_from_loss_forward": Flag("None (default: from the loss forward where possible), True, False", True),
    "behavior_server_timeout": _SECONDS,
    "behavior_server_connect_timeout": _SECONDS,
    "behavior_server_base_url": check_url,
    "prefix_scorer_model": check_model_path,
    "prefix_source": registered(available_prefix_sources, "source", "register_prefix_source"),
    "prefix_source_weights": check_source_weights,
    "prefix_dataset_fallback": Choice(PREFIX_DATASET_FALLBACKS),
    "prefix_teacher_base_url": check_url,
    "importance_sampling_level": Choice(IMPORTANCE_SAMPLING_LEVELS),
    "epsilon_high": _OPTIONAL_NUMBER,
    "off_policy_mask_threshold": _OPTIONAL_NUMBER,
    "log_position_statistics": Flag(),
    "loss_type": Choice(LOSS_TYPES, "is not a loss type of TRL 1.16", " (paper default 'dapo')"),
    "max_completion_length": check_completion_budget,
}


def check_field(name: str, value: Any) -> None:
    """Raise ValueError, naming ``name`` and what it accepts, when ``value`` breaks the rule of :data:`FIELD_RULES`."""
    FIELD_RULES[name](name, value)


def validate_fields(values: Mapping[str, Any], names: Iterable[str] | None = None) -> None:
    """Check ``values[name]`` for each of ``names`` in order (default: every option of :data:`FIELD_RULES` that
    ``values`` holds, in the table's order); the first refusal raises."""
    for name in names if names is not None else [n for n in FIELD_RULES if n in values]:
        check_field(name, values[name])


# ------------------------------------------------------------------------------------ rules across options


def behavior_server_url(base_url: str | None, host: str, port: int) -> str:
    """The behavior server's base URL: ``base_url``, else built from host and port."""
    return base_url or f"http://{host}:{port}"


def check_prefetch_backend(args) -> None:
    """behavior_prefetch > 0 needs the vllm_server backend."""
    if args.behavior_prefetch > 0 and args.behavior_backend != "vllm_server":
        raise ValueError(
            f"behavior_prefetch={args.behavior_prefetch} needs behavior_backend='vllm_server' (got "
            f"{args.behavior_backend!r}): the local copy would have to generate in the training process while it "
            "trains, which gains nothing on shared cores and deadlocks ZeRO-3's collectives. Allowed values with "
            "the local backend: 0."
        )


def check_nccl_needs_cuda(method: str | None, use_cpu: bool, cuda_available: bool | None = None) -> None:
    """behavior_refresh_method='nccl' (TRL's NCCL weight transfer) needs CUDA GPUs in the run.
    ``cuda_available``: None reads ``torch.cuda.is_available()``."""
    if method != "nccl":
        return
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if use_cpu or not cuda_available:
        raise ValueError(
            "behavior_refresh_method='nccl' needs CUDA GPUs (TRL's NCCL weight transfer), and this run has "
            f"none (use_cpu={use_cpu}, CUDA available: {cuda_available}). Allowed values "
            "on CPU: 'disk', or 'lora' with a PEFT model."
        )


def check_lora_needs_peft(method: str | None, is_peft: bool) -> None:
    """behavior_refresh_method='lora' loads the trained adapter on the server: it needs a PEFT model."""
    if method == "lora" and not is_peft:
        raise ValueError(
            "behavior_refresh_method='lora' needs a PEFT model (pass peft_config or a PeftModel). Allowed values "
            "for a fully fine-tuned model: 'disk', 'nccl'."
        )


def check_local_peft_zero3(behavior_backend: str, is_peft: bool, zero3: bool) -> None:
    """A PEFT model with the local behavior backend is refused under DeepSpeed ZeRO-3 (the behavior adapter would be
    partitioned with the learner; not tested): before the model loads (``checks.py``) and when a local backend is
    built (``behavior/local.py``, also without a trainer)."""
    if behavior_backend == "local" and is_peft and zero3:
        raise ValueError(
            "peft_config with behavior_backend='local' is not supported under DeepSpeed ZeRO-3 in this release. "
            "Allowed: full fine-tuning under ZeRO-3, PEFT under DDP or ZeRO-1/2, or behavior_backend='vllm_server'."
        )


def check_dataset_logps_strategy(args) -> None:
    """The 'entropy' strategy cannot cut dataset prefixes scored by a log-prob column (it has no entropies)."""
    if "dataset" in source_names(args) and args.prefix_logps_column is not None and args.prefix_strategy == "entropy":
        raise ValueError(
            f"prefix_strategy='entropy' cannot cut dataset prefixes scored by prefix_logps_column="
            f"{args.prefix_logps_column!r}: a log-prob column has no entropies. Allowed: prefix_logps_column=None "
            "(the scorer's forward gives log-probs and entropies), or prefix_strategy 'ratio' / 'fixed_budget'."
        )


def check_teacher_url(args) -> None:
    """The 'teacher' prefix source needs its server's URL."""
    if "teacher" in source_names(args) and not args.prefix_teacher_base_url:
        raise ValueError(
            "prefix_source 'teacher' needs prefix_teacher_base_url, the teacher's vLLM server (e.g. "
            "'http://127.0.0.1:8002', started with python -m trl_soup.serve_behavior --model TEACHER)."
        )


def check_prefetch_sources(args) -> None:
    """behavior_prefetch prefetches the behavior copy's samples only."""
    used = set(source_names(args))
    if args.behavior_prefetch > 0 and used != {"behavior"}:
        raise ValueError(
            f"behavior_prefetch={args.behavior_prefetch} prefetches the behavior copy's samples only; this run "
            f"draws prefixes from {sorted(used)}. Allowed: behavior_prefetch=0 with other prefix sources."
        )


def check_pool_refresh_method(args) -> None:
    """A pool on a vLLM server is LoRA adapters side by side: behavior_refresh_method='lora'."""
    if (
        args.behavior_pool_size > 1
        and args.behavior_backend == "vllm_server"
        and args.behavior_refresh_method != "lora"
    ):
        raise ValueError(
            f"behavior_pool_size={args.behavior_pool_size} with behavior_backend='vllm_server' needs "
            f"behavior_refresh_method='lora' (got {args.behavior_refresh_method!r}): a server holds one set of "
            "base weights, so the pool's snapshots are LoRA adapters loaded side by side. Allowed: "
            "behavior_refresh_method='lora' with a PEFT model, behavior_backend='local', or behavior_pool_size=1."
        )


def check_prefix_budget_strategy(args) -> None:
    """prefix_budget is used by prefix_strategy='fixed_budget' only; 'ratio' and 'entropy' would ignore it."""
    if args.prefix_budget is not None and args.prefix_strategy in ("ratio", "entropy"):
        raise ValueError(
            f"prefix_budget={args.prefix_budget!r} is used only by prefix_strategy='fixed_budget'; "
            f"prefix_strategy={args.prefix_strategy!r} ignores it. Allowed: prefix_budget=None with "
            f"{args.prefix_strategy!r}, or prefix_strategy='fixed_budget'."
        )


def check_prefix_budget(args) -> None:
    """prefix_budget: None, or tokens of behavior prefix in [1, max_completion_length]."""
    if args.prefix_budget is not None:
        note = " (tokens of behavior prefix, at most max_completion_length)"
        Int(1, args.max_completion_length, note=note)("prefix_budget", args.prefix_budget)


def check_refresh_min_interval(args) -> None:
    """Policies other than 'fixed' refresh within [behavior_refresh_min_interval, T] batches of the last refresh."""
    interval, minimum = args.behavior_refresh_interval, args.behavior_refresh_min_interval
    if args.behavior_refresh_policy != "fixed" and minimum > interval:
        raise ValueError(
            f"behavior_refresh_min_interval={minimum} is larger than behavior_refresh_interval={interval} (T): "
            f"the refresh policy {args.behavior_refresh_policy!r} may refresh no sooner than the minimum and no "
            f"later than T. Allowed values: 1 to {interval}."
        )


def server_address_warnings(args) -> Iterator[str]:
    """Refuse a behavior or teacher server off the loopback without a token; yield a warning for each where the token
    would cross the network in clear text (the rule: :func:`trl_soup.server_auth.check_server_address`)."""
    servers = []
    if args.behavior_backend == "vllm_server":
        option = "behavior_server_base_url" if args.behavior_server_base_url else "behavior_server_host"
        url = behavior_server_url(args.behavior_server_base_url, args.behavior_server_host, args.behavior_server_port)
        servers.append((url, option))
    if "teacher" in source_names(args):
        servers.append((args.prefix_teacher_base_url, "prefix_teacher_base_url"))
    has_token = bool(servers) and client_token(args.behavior_server_token) is not None  # checks its form too
    for url, option in servers:
        warning = check_server_address(url, has_token, option)
        if warning:
            yield warning


_AT_T1 = " (or behavior_refresh_interval=1: plain DAPO, as GRPOTrainer)"


def check_relay_options(args) -> None:
    """GRPO options that relay batches cannot honour: refused when T > 1 (T = 1 is plain DAPO, where SOUPTrainer
    accepts whatever GRPOTrainer does)."""
    if args.behavior_refresh_interval <= 1:
        return
    if args.use_vllm and args.vllm_structured_outputs_regex is not None:
        raise ValueError(
            f"vllm_structured_outputs_regex={args.vllm_structured_outputs_regex!r} cannot be used with SOUP: on "
            "relay batches vLLM writes only the continuation after a behavior prefix, so the regex would "
            f"constrain the continuation alone, not the whole completion. Allowed value: None{_AT_T1}."
        )
    if args.use_transformers_continuous_batching:
        raise ValueError(
            "use_transformers_continuous_batching=True is not supported on relay batches in this release. "
            f"Allowed value: False{_AT_T1}."
        )
    if args.fsdp:
        raise ValueError(
            f"fsdp={args.fsdp!r} is not supported by SOUPTrainer in this release: the behavior copy and its "
            "refresh are written for unsharded or DeepSpeed ZeRO-3 parameters. Allowed values: fsdp disabled "
            f"(use DDP or DeepSpeed ZeRO-1/2/3){_AT_T1}."
        )


def check_beam_search(args) -> None:
    """Beam search is no sampling distribution: a prefix found by it has no pi_behavior (refused when T > 1)."""
    generation = args.generation_kwargs if isinstance(args.generation_kwargs, dict) else {}
    for name in ("num_beams", "num_beam_groups"):
        beams = generation.get(name, 1)
        if args.behavior_refresh_interval > 1 and beams is not None and beams != 1:
            raise ValueError(
                f"generation_kwargs={{'{name}': {beams!r}, ...}} cannot be used with behavior_refresh_interval="
                f"{args.behavior_refresh_interval}: beam search is no sampling distribution, so a behavior prefix "
                "found by it has no pi_behavior for the denominator of Eq. 5. Allowed: "
                f"{name}=1 (sampling), or behavior_refresh_interval=1 (plain DAPO, as GRPOTrainer)."
            )


def sampling_filters(args) -> dict:
    """The sampling settings of ``args`` that make vLLM's sampling distribution differ from
    ``softmax(logits / temperature)``: ``{name: value}`` for each active one (empty when none is).

    ``args`` needs ``top_p``, ``top_k``, ``min_p`` and ``repetition_penalty`` (GRPOConfig's defaults 1.0, 0, None, 1.0
    are all inactive; ``top_k`` of None, 0 or -1 and ``min_p`` of None or 0 mean "off").
    """
    active = {}
    top_p = getattr(args, "top_p", 1.0)
    if top_p is not None and top_p < 1.0:
        active["top_p"] = top_p
    top_k = getattr(args, "top_k", 0)
    if top_k is not None and top_k > 0:
        active["top_k"] = top_k
    min_p = getattr(args, "min_p", None)
    if min_p is not None and min_p > 0.0:
        active["min_p"] = min_p
    repetition_penalty = getattr(args, "repetition_penalty", 1.0)
    if repetition_penalty is not None and repetition_penalty != 1.0:
        active["repetition_penalty"] = repetition_penalty
    return active


def check_sampling_settings(args) -> None:
    """Refuse sampling settings for which the "vllm_server" backend cannot return exact behavior log-probs.

    The prefix denominator pi_behavior is ``log_softmax(logits / temperature)`` of the behavior weights, the
    distribution TRL's pi_theta is evaluated on (docs/deviations.md). A vLLM server gives it either as its sampling
    log-probs (``processed_logprobs``, exact only when no filter or penalty is active) or as prompt log-probs of a
    re-scoring request (exact only at temperature 1: vLLM computes prompt log-probs from the raw logits). With a
    filter active and ``temperature != 1`` neither is exact, so this raises ``ValueError``.

    ``args``: a SOUPConfig-like object with ``behavior_backend``, ``temperature``, ``top_p``, ``top_k``, ``min_p`` and
    ``repetition_penalty``. Does nothing for other backends (the "local" backend scores any setting exactly).
    """
    if getattr(args, "behavior_backend", None) != "vllm_server":
        return
    active = sampling_filters(args)
    temperature = getattr(args, "temperature", 1.0)
    if active and temperature != 1.0:
        settings = ", ".join(f"{name}={value!r}" for name, value in active.items())
        raise ValueError(
            f"behavior_backend='vllm_server' with temperature={temperature!r} and {settings}: a vLLM server cannot "
            "return the prefix denominator log_softmax(logits / temperature) when sampling filters are on (its "
            "sampling log-probs are renormalised over the kept tokens, and its prompt log-probs ignore the "
            "temperature). Allowed: temperature=1.0 with any top_p / top_k / min_p / repetition_penalty; or, at any "
            "temperature, no filter: top_p=1.0, top_k=0 (or None, -1), min_p=None (or 0.0), repetition_penalty=1.0; "
            "or behavior_backend='local'."
        )


# ------------------------------------------------------------------------------------ options a run ignores


def _ignored_groups(args, used: list[str]) -> tuple:
    """``(whether this run ignores the options, the options, why)`` for each group of options a choice can ignore."""
    return (
        (
            args.prefix_strategy == "entropy",
            ("prefix_ratio",),
            "prefix_strategy='entropy' cuts at a high-entropy token, not at a ratio",
        ),
        (
            args.prefix_strategy in ("ratio", "fixed_budget"),
            ("prefix_entropy_top_k",),
            f"prefix_strategy={args.prefix_strategy!r} does not use entropy",
        ),
        (
            args.behavior_backend == "local",
            SERVER_FIELDS,
            "it configures behavior_backend='vllm_server', and this run uses 'local'",
        ),
        (
            args.behavior_refresh_policy == "fixed",
            REFRESH_POLICY_FIELDS,
            "behavior_refresh_policy='fixed' refreshes every behavior_refresh_interval",
        ),
        (args.behavior_pool_size == 1, POOL_FIELDS, "behavior_pool_size=1 keeps one snapshot, which writes every row"),
        (
            "dataset" not in used,
            DATASET_SOURCE_FIELDS,
            f"it configures prefix_source 'dataset', and this run draws from {used}",
        ),
    )


def ignored_options(args, defaults: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(option, reason)`` for each SOUP option that this run ignores and that is set to a value other than its
    default (``defaults``: option -> default); SOUPConfig warns for each."""
    groups = _ignored_groups(args, source_names(args))
    ignored = [
        (name, why)
        for ignores, names, why in groups
        if ignores
        for name in names
        if getattr(args, name) != defaults[name]
    ]
    if args.prefix_source_weights and args.prefix_source != "behavior":
        ignored.append(("prefix_source", "prefix_source_weights chooses each row's source"))
    return ignored
