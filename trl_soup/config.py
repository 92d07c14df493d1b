"""SOUPConfig: GRPOConfig plus the SOUP fields, with validation that fails before any model is loaded.

The rules themselves are the pure functions of :mod:`trl_soup.validation`; ``__post_init__`` calls them in order."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

from trl import GRPOConfig

from .server_auth import TOKEN_ENV
from .validation import (
    BEHAVIOR_BACKENDS,
    BEHAVIOR_REFRESH_METHODS,
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_TYPES,
    MAX_POOL_SIZE,
    PREFIX_DATASET_FALLBACKS,
    behavior_server_url,
    check_beam_search,
    check_dataset_logps_strategy,
    check_nccl_needs_cuda,
    check_pool_refresh_method,
    check_prefetch_backend,
    check_prefetch_sources,
    check_prefix_budget,
    check_prefix_budget_strategy,
    check_refresh_min_interval,
    check_relay_options,
    check_sampling_settings,
    check_teacher_url,
    ignored_options,
    parse_json_option,
    server_address_warnings,
    validate_fields,
)

# The names this module has always offered; the values live in trl_soup.validation.
__all__ = [
    "BEHAVIOR_BACKENDS",
    "BEHAVIOR_REFRESH_METHODS",
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_TYPES",
    "MAX_POOL_SIZE",
    "PREFIX_DATASET_FALLBACKS",
    "SOUPConfig",
]

# The options of trl_soup.validation.FIELD_RULES in the order SOUPConfig checks them (the first refusal is reported),
# between the rules across options.
FIELDS_FIRST = (
    "prefix_strategy",
    "prefix_ratio",
    "prefix_entropy_top_k",
    "behavior_refresh_interval",
    "behavior_refresh_policy",
    "behavior_max_staleness",
    "behavior_refresh_min_interval",
    "behavior_pool_size",
    "behavior_pool_sampling",
    "behavior_backend",
    "behavior_refresh_method",
    "behavior_server_port",
    "behavior_server_group_port",
    "behavior_server_max_retries",
    "prefix_entropy_logprobs",
    "behavior_prefetch",
)
SERVER_VALUE_FIELDS = (
    "old_logps_from_loss_forward",
    "behavior_server_timeout",
    "behavior_server_connect_timeout",
    "behavior_server_base_url",
)


def _option(default, help: str):
    """A field with its command-line help (``metadata["help"]``, which HfArgumentParser and TrlParser show)."""
    return field(default=default, metadata={"help": help})


LOSS_BOUND_FIELDS = (
    "importance_sampling_level",
    "epsilon_high",
    "off_policy_mask_threshold",
    "log_position_statistics",
)


@dataclass
class SOUPConfig(GRPOConfig):
    r"""
    Configuration for [`SOUPTrainer`]: every [`~trl.GRPOConfig`] field plus the SOUP fields below.

    SOUP (arXiv 2601.21476) builds most trajectories in relay: a frozen historical copy of the policy (the behavior
    policy, refreshed every `behavior_refresh_interval` generation batches) writes the beginning of each response, the
    response is cut, and the current policy finishes it. The DAPO loss weights prefix tokens by pi_theta/pi_behavior
    and continuation tokens by pi_theta/pi_old (paper Eq. 5).

    Defaults follow the paper (Sec. 4): DAPO token-level loss (`loss_type="dapo"`), clip-higher
    (`epsilon=0.2`, `epsilon_high=0.28`), no KL term (`beta=0.0`), ratio truncation at 0.5, T = 8. Of the GRPOConfig
    fields only `epsilon_high` gets a new default; `loss_type`, `epsilon` and `beta` already have these values there.

    Parameters:
        prefix_strategy (`str`, *optional*, defaults to `"ratio"`):
            How each behavior response is cut (paper Sec. 3.3): `"ratio"`, `"entropy"`, `"fixed_budget"` (decode only
            the prefix that is kept, Appendix C), or any name registered with `trl_soup.register_prefix_strategy`.
        prefix_ratio (`float`, *optional*, defaults to `0.5`):
            Fraction of the behavior response kept as prefix by the `"ratio"` strategy, in [0, 1].
        prefix_entropy_top_k (`int`, *optional*, defaults to `32`):
            Number of highest-entropy positions among which the `"entropy"` strategy draws its cut.
        prefix_budget (`int` or `None`, *optional*, defaults to `None`):
            Tokens of behavior prefix decoded and kept by `prefix_strategy="fixed_budget"`, in
            [1, `max_completion_length`]; None: `round(prefix_ratio * max_completion_length)`. Refused with
            `"ratio"` and `"entropy"`, which ignore it.
        behavior_refresh_interval (`int`, *optional*, defaults to `8`):
            T: the behavior snapshot is refreshed from the learner every T generation batches. T = 1 is plain DAPO.
        behavior_refresh_policy (`str`, *optional*, defaults to `"fixed"`):
            `"fixed"`: every T batches. `"adaptive"`: also when the staleness of the last relay batch exceeds
            `behavior_max_staleness`, within `[behavior_refresh_min_interval, T]` batches of the last refresh; or a
            name registered with `trl_soup.register_refresh_policy`.
        behavior_max_staleness (`float`, *optional*, defaults to `0.02`):
            `"adaptive"`: the staleness (mean KL(pi_behavior || pi_theta) estimate per prefix token) that triggers a
            refresh.
        behavior_refresh_min_interval (`int`, *optional*, defaults to `2`):
            Policies other than `"fixed"`: the fewest generation batches between two refreshes.
        behavior_pool_size (`int`, *optional*, defaults to `1`):
            K: a pool of the K most recent snapshots (each refresh overwrites the oldest); each relay row takes its
            prefix, and its denominators, from one member. 1 is the paper's single snapshot (docs/refresh.md).
        behavior_pool_sampling (`str`, *optional*, defaults to `"newest"`):
            Which member writes each relay row: `"newest"`, `"uniform"`, `"oldest"`, or a name registered with
            `trl_soup.register_pool_sampling`.
        prefix_source (`str`, *optional*, defaults to `"behavior"`):
            What writes the relay prefixes: `"behavior"` (the historical copy), `"dataset"` (reference completions),
            `"teacher"` (a teacher's vLLM server), `"on_policy"`, or a name registered with
            `trl_soup.register_prefix_source` (docs/prefix_sources.md).
        prefix_source_weights (`dict` or `None`, *optional*, defaults to `None`):
            Each relay row's source drawn among several with these weights, e.g. `{"behavior": 0.5, "dataset": 0.5}`.
        prefix_dataset_column (`str`, *optional*, defaults to `"reference_completion"`):
            `"dataset"` source: the column of reference completions (text, token ids or chat messages).
        prefix_logps_column (`str` or `None`, *optional*, defaults to `None`):
            `"dataset"` source: a column of per-token log-probs of the references (the prefix denominators).
        prefix_scorer_model (`str` or `None`, *optional*, defaults to `None`):
            `"dataset"` source without a log-prob column: the model that scores the references (None: the initial
            policy).
        prefix_dataset_fallback (`str`, *optional*, defaults to `"on_policy"`):
            `"dataset"` source: who writes the rows without a reference, `"on_policy"` or `"behavior"`.
        prefix_teacher_base_url (`str` or `None`, *optional*, defaults to `None`):
            `"teacher"` source: base URL of the teacher's vLLM server.
        behavior_backend (`str`, *optional*, defaults to `"local"`):
            Where the behavior policy runs. `"local"`: a frozen copy in the training process (a second adapter for
            PEFT models). `"vllm_server"`: a vLLM server of its own, configured by the `behavior_server_*` and
            `behavior_refresh_*` fields below.
        behavior_server_base_url (`str` or `None`, *optional*, defaults to `None`):
            `"vllm_server"`: base URL of the behavior server (`http://` or `https://`); None: built from
            `behavior_server_host` and `behavior_server_port`.
        behavior_server_host (`str`, *optional*, defaults to `"127.0.0.1"`):
            `"vllm_server"`: host of the behavior server when no base URL is given.
        behavior_server_port (`int`, *optional*, defaults to `8001`):
            `"vllm_server"`: port of the behavior server when no base URL is given.
        behavior_server_timeout (`float`, *optional*, defaults to `240.0`):
            `"vllm_server"`: seconds to wait for the server to answer at start, then training stops with an error.
        behavior_server_connect_timeout (`float`, *optional*, defaults to `10.0`):
            `"vllm_server"`: seconds to try a connection before the model is loaded: nothing listening fails fast.
        behavior_server_max_retries (`int`, *optional*, defaults to `3`):
            `"vllm_server"`: retries of a failed request (exponential back-off) before training stops with an error.
        behavior_refresh_method (`str`, *optional*, defaults to `"disk"`):
            `"vllm_server"`: how the server gets the learner's weights every T batches: `"disk"` (saved, merged under
            PEFT, and reloaded; works on CPU), `"lora"` (PEFT only: the adapter under a new name) or `"nccl"` (TRL's
            weight transfer; needs CUDA).
        behavior_server_token (`str` or `None`, *optional*, defaults to `None`):
            `"vllm_server"` and the `"teacher"` source: the token of servers started with one (`trl-soup
            serve-behavior` with `TRL_SOUP_SERVER_TOKEN` or `--token-file`), sent on every request; None: read
            `TRL_SOUP_SERVER_TOKEN`. Needed for a server off the loopback. Never logged nor saved: `to_dict` and
            `repr` show a placeholder, and a pickled config (`training_args.bin`) holds None.
        behavior_server_ca_file (`str` or `None`, *optional*, defaults to `None`):
            `"vllm_server"` and the `"teacher"` source with an `https://` URL: CA certificates that verify the
            server (a self-signed server's certificate itself); None: the system's.
        behavior_server_group_port (`int`, *optional*, defaults to `51217`):
            `"vllm_server"` with `"nccl"` refresh: port of the weight-update group (distinct from `vllm_group_port`).
        behavior_refresh_dir (`str` or `None`, *optional*, defaults to `None`):
            `"vllm_server"` with `"disk"` or `"lora"` refresh: where the weights are written for the server to read;
            None: `<output_dir>/behavior_refresh`.
        prefix_entropy_logprobs (`int`, *optional*, defaults to `20`):
            `"vllm_server"` with `prefix_strategy="entropy"`: top log-probs requested per token to estimate the
            behavior entropy (docs/deviations.md).
        log_position_statistics (`bool`, *optional*, defaults to `False`):
            Log entropy and clip ratio per tenth of relative token position (`soup/position/...`, paper Fig. 5).
        behavior_prefetch (`int`, *optional*, defaults to `0`):
            `"vllm_server"` only: number of upcoming generation batches whose behavior responses are sampled in the
            background while the current step trains (never across a refresh); 0 disables it.
        old_logps_from_loss_forward (`bool` or `None`, *optional*, defaults to `None`):
            None (default) or True: skip the pi_old forward on relay batches when TRL would skip it (generation and
            optimisation aligned) and read pi_old from the loss forward instead; the batch then has
            `old_per_token_logps=None`. False: always a separate pi_old forward (True warns where it cannot apply).
        epsilon_high (`float` or `None`, *optional*, defaults to `0.28`):
            Upper clipping epsilon (clip-higher, DAPO; paper Sec. 4). GRPOConfig's default is None (= `epsilon`).
    """

    prefix_strategy: str = _option(
        "ratio",
        "How each behavior response is truncated into a prefix (paper Sec. 3.3): 'ratio' keeps the first "
        "round(len * prefix_ratio) tokens; 'entropy' cuts before a token drawn uniformly among the "
        "prefix_entropy_top_k highest-entropy positions; or any name registered with "
        "trl_soup.register_prefix_strategy. Default 'ratio'.",
    )
    prefix_ratio: float = _option(
        0.5,
        "Fraction of the behavior response kept as prefix by the 'ratio' strategy, in [0, 1] (paper Sec. "
        "3.3 and 4: 0.5 for Qwen2.5-Math-7B, 0.3 for DeepSeek-R1-Distill-Qwen-1.5B; 0 is on-policy). Default 0.5.",
    )
    prefix_entropy_top_k: int = _option(
        32,
        "Number of highest-entropy positions of the behavior response among which the 'entropy' strategy "
        "draws its cut uniformly (paper Sec. 3.3, k = 32). Default 32.",
    )
    prefix_budget: int | None = _option(
        None,
        "Token budget of the behavior prefix for prefix_strategy='fixed_budget' (paper Appendix C: decode "
        "only the prefix that is kept, instead of a full response that is then cut). None: "
        "round(prefix_ratio * max_completion_length). Default None.",
    )
    behavior_refresh_interval: int = _option(
        8,
        "T, in generation batches: the behavior snapshot is refreshed from the learner every T batches; "
        "the batch right after a refresh is on-policy and batches 2..T are relay batches (paper Sec. 3.2, "
        "ablation over T in {1, 2, 4, 8, 16}; best T = 8 for Qwen2.5-Math-7B). T = 1 is plain DAPO. Default 8.",
    )
    behavior_refresh_policy: str = _option(
        "fixed",
        "When the behavior copy is refreshed (paper Sec. 4.3 asks for an automatic T): 'fixed' every "
        "behavior_refresh_interval batches (the paper); 'adaptive' also once the last relay batch's staleness "
        "(mean KL(pi_behavior || pi_theta) estimate per prefix token) exceeds behavior_max_staleness, never "
        "sooner than behavior_refresh_min_interval batches after a refresh and never later than T; or a name "
        "registered with trl_soup.register_refresh_policy. Default 'fixed'.",
    )
    behavior_max_staleness: float = _option(
        0.02,
        "behavior_refresh_policy='adaptive': refresh once the staleness of the last relay batch exceeds "
        "this many nats per prefix token (paper Sec. 4.3; an estimate of KL(pi_behavior || pi_theta), "
        "docs/equations.md). Default 0.02.",
    )
    behavior_refresh_min_interval: int = _option(
        2,
        "Policies other than 'fixed': no refresh sooner than this many generation batches after the last "
        "one, so every window has at least one relay batch when it is 2 or more (paper Sec. 4.3). Default 2.",
    )
    behavior_pool_size: int = _option(
        1,
        "K: the behavior policy is a pool of the K most recent snapshots (each refresh overwrites the "
        "oldest) and each relay row takes its prefix from one member (behavior_pool_sampling), with that "
        "member's log-probs as its denominators (extends the single snapshot of Sec. 3.2, as the paper's "
        "Limitations ask). 1 is the paper's single snapshot. The local backend keeps K full copies (memory grows "
        "K-fold) or K PEFT adapters; vllm_server needs behavior_refresh_method='lora' (K adapters on the "
        "server). Default 1.",
    )
    behavior_pool_sampling: str = _option(
        "newest",
        "behavior_pool_size > 1: which member writes each relay row: 'newest' (the copy of Sec. 3.2), "
        "'uniform' (a member drawn uniformly per row), 'oldest', or a name registered with "
        "trl_soup.register_pool_sampling. Default 'newest'.",
    )
    prefix_source: str = _option(
        "behavior",
        "What writes the relay prefixes: 'behavior' (the historical copy of Sec. 3.2), 'dataset' (each "
        "row's reference completion, prefix_dataset_column), 'teacher' (a model on its own vLLM server, "
        "prefix_teacher_base_url), 'on_policy' (no prefix), or a name registered with "
        "trl_soup.register_prefix_source (the paper's Limitations ask for heterogeneous sources). Default "
        "'behavior'.",
    )
    prefix_source_weights: dict | str | None = _option(
        None,
        "Draw each relay row's prefix source among several, e.g. {'behavior': 0.5, 'dataset': 0.5} (a "
        "JSON string on the command line); prefix_source is then not used. Logged per source as "
        "soup/source/<name>/... (beyond Sec. 3.2). Default None.",
    )
    prefix_dataset_column: str = _option(
        "reference_completion",
        "prefix_source 'dataset': the column holding each prompt's reference completion (a string, "
        "tokenised without special tokens and followed by EOS; a list of token ids, kept as they are; or chat "
        "messages, whose assistant content is used). The prefix is cut from it by prefix_strategy (Sec. 3.3). "
        "Default 'reference_completion'.",
    )
    prefix_logps_column: str | None = _option(
        None,
        "prefix_source 'dataset': a column of per-token log-probs of the reference (token ids, sampled "
        "by a known model): the prefix denominators of Eq. 5. None: the frozen scorer's log-probs stand in for "
        "pi_behavior (prefix_scorer_model; docs/equations.md for the bias). Default None.",
    )
    prefix_scorer_model: str | None = _option(
        None,
        "prefix_source 'dataset' without prefix_logps_column: the model whose log-probs score the "
        "references (Eq. 5's prefix denominator); it must share the learner's tokenizer. None: the initial "
        "policy (a frozen copy of the learner as the trainer is built). Default None.",
    )
    prefix_dataset_fallback: str = _option(
        "on_policy",
        "prefix_source 'dataset': who writes the rows without a reference: 'on_policy' (no prefix, the "
        "current policy writes the row) or 'behavior' (the historical copy of Sec. 3.2). Default 'on_policy'.",
    )
    prefix_teacher_base_url: str | None = _option(
        None,
        "prefix_source 'teacher': base URL of the teacher's vLLM server (python -m "
        "trl_soup.serve_behavior --model TEACHER), e.g. 'http://127.0.0.1:8002'. Never refreshed; its sampling "
        "log-probs are the prefix denominators of Eq. 5; its tokenizer must be the learner's. Default None.",
    )
    behavior_backend: str = _option(
        "local",
        "Where the behavior policy runs (paper Sec. 3.2 keeps a historical copy). 'local': a frozen copy "
        "in the training process, a second adapter for PEFT models; 'vllm_server': a vLLM server of its own, "
        "refreshed every T batches (behavior_refresh_method). Default 'local'.",
    )
    behavior_server_base_url: str | None = _option(
        None,
        "vllm_server backend: base URL of the behavior server, e.g. 'http://127.0.0.1:8001'. If None, "
        "behavior_server_host and behavior_server_port are used. Default None.",
    )
    behavior_server_host: str = _option(
        "127.0.0.1",
        "vllm_server backend: host of the behavior server when no base URL is given. Default '127.0.0.1'.",
    )
    behavior_server_port: int = _option(
        8001,
        "vllm_server backend: port of the behavior server when no base URL is given. Default 8001.",
    )
    behavior_server_timeout: float = _option(
        240.0,
        "vllm_server backend: seconds to wait for the behavior server to answer at start; past that, "
        "training stops with an error naming the address. Default 240.",
    )
    behavior_server_connect_timeout: float = _option(
        10.0,
        "vllm_server backend: seconds to try a connection to the behavior server before the model is "
        "loaded; an address where nothing listens fails within this time. A server still loading its model "
        "passes (it holds its port), and is then waited for up to behavior_server_timeout. Default 10.",
    )
    behavior_server_max_retries: int = _option(
        3,
        "vllm_server backend: retries of a failed request (with exponential back-off) before training "
        "stops with an error. Default 3.",
    )
    behavior_refresh_method: str = _option(
        "disk",
        "vllm_server backend: how the server gets the learner's weights every T batches. 'disk': saved "
        "(merged under PEFT) and reloaded by the server, works on CPU; 'lora': PEFT only, the adapter is loaded "
        "under a new name; 'nccl': TRL's weight transfer (GPU). Default 'disk'.",
    )
    behavior_server_token: str | None = _option(
        None,
        "vllm_server backend and the 'teacher' prefix source: the token of servers started with one "
        f"(trl-soup serve-behavior with {TOKEN_ENV} or --token-file), sent as 'Authorization: Bearer' on every "
        f"request. None: read {TOKEN_ENV} from the environment (preferred: a command-line flag shows in `ps`). "
        "Needed for a server off this machine's loopback. Never logged nor saved: to_dict and repr show a "
        "placeholder, and pickled configs (training_args.bin) hold None. Default None.",
    )
    behavior_server_ca_file: str | None = _option(
        None,
        "vllm_server backend and the 'teacher' prefix source with an https:// URL: a file of CA "
        "certificates that verify the server (for a self-signed server, its certificate). None: the system's "
        "CA certificates. Default None.",
    )
    behavior_server_group_port: int = _option(
        51217,
        "vllm_server backend with behavior_refresh_method='nccl': port of the weight-update group "
        "(distinct from TRL's vllm_group_port). Default 51217.",
    )
    behavior_refresh_dir: str | None = _option(
        None,
        "vllm_server backend with 'disk' or 'lora' refresh: where weights are written for the server to "
        "read; must be visible to the server. Default None: <output_dir>/behavior_refresh.",
    )
    prefix_entropy_logprobs: int = _option(
        20,
        "vllm_server backend with prefix_strategy='entropy': number of top log-probs requested per token "
        "to estimate the behavior entropy; see docs/deviations.md for the estimate and its bound. Default 20.",
    )
    log_position_statistics: bool = _option(
        False,
        "Log entropy and clip ratio per tenth of relative token position (10 bins) (soup/position/...), "
        "the training analysis of paper Fig. 5; plot with `trl-soup plot-positions`. Costs one small "
        "all-reduce per step. Default False.",
    )
    behavior_prefetch: int = _option(
        0,
        "Number of upcoming generation batches whose behavior responses are sampled in the background "
        "while the current step trains (vllm_server backend only; never across a refresh, whose snapshot does "
        "not exist yet). Samples are the same as without prefetching (seeded per generation batch). The cost "
        "the paper reports (Sec. 5, 72.75 vs 92.63 s/step) is mostly this decoding on the critical path. "
        "0 disables it. Default 0.",
    )
    old_logps_from_loss_forward: bool | None = _option(
        None,
        "When generation and optimisation are aligned (num_iterations=1, steps_per_generation <= "
        "gradient_accumulation_steps, no vLLM importance-sampling correction), TRL skips its pi_old forward "
        "because pi_old equals the weights of the loss forward. None (the default) or True: SOUP skips it on "
        "relay batches too and takes the continuation's pi_old log-probs from the loss forward (detached), "
        "building the Eq. 5 denominator inside the loss; the batch then carries old_per_token_logps=None, as "
        "TRL's does. Same loss, one forward pass fewer per relay batch. Where TRL computes pi_old itself it "
        "is used (True then warns). False: a separate pi_old forward, so old_per_token_logps is in every "
        "relay batch. Default None.",
    )
    # Paper Sec. 4: DAPO with clip-higher. GRPOConfig already defaults to loss_type="dapo", epsilon=0.2, beta=0.0.
    epsilon_high: float | None = _option(
        0.28,
        "Upper clipping epsilon (clip-higher, DAPO). SOUP's paper uses 0.28 (Sec. 4). Default 0.28.",
    )

    @property
    def behavior_server_url(self) -> str:
        """The behavior server's base URL: ``behavior_server_base_url``, else built from host and port."""
        return behavior_server_url(self.behavior_server_base_url, self.behavior_server_host, self.behavior_server_port)

    def __repr__(self):
        # @dataclass would write every field, the server token included; TrainingArguments.__str__ masks `*_token`.
        return str(self)

    def __getstate__(self):
        """Pickled copies (checkpoints' ``training_args.bin``; ``copy.deepcopy`` too) hold no server token: their
        ``behavior_server_token`` is None, so they read ``TRL_SOUP_SERVER_TOKEN`` like an unset field."""
        return {**self.__dict__, "behavior_server_token": None}

    def __post_init__(self):
        # SOUP's own fields first, so a typo there is reported before anything else happens. The rules are those of
        # trl_soup.validation; the order of the calls is the order of the refusals.
        self._validate_soup_fields()
        self._validate_prefix_sources()
        check_pool_refresh_method(self)
        check_prefix_budget_strategy(self)
        validate_fields(vars(self), LOSS_BOUND_FIELDS)
        check_refresh_min_interval(self)
        for warning in server_address_warnings(self):  # refuses a server off the loopback without a token
            warnings.warn(warning, UserWarning, stacklevel=3)
        super().__post_init__()
        self._validate_grpo_compatibility()
        defaults = {f.name: f.default for f in fields(SOUPConfig)}
        for name, reason in ignored_options(self, defaults):
            warnings.warn(f"{name}={getattr(self, name)!r} is ignored: {reason}.", UserWarning, stacklevel=3)

    def _validate_soup_fields(self):
        validate_fields(vars(self), FIELDS_FIRST)
        self.prefix_ratio = float(self.prefix_ratio)
        check_prefetch_backend(self)
        validate_fields(vars(self), SERVER_VALUE_FIELDS)
        if self.behavior_backend == "vllm_server":
            check_nccl_needs_cuda(self.behavior_refresh_method, self.use_cpu)

    def _validate_prefix_sources(self):
        validate_fields(vars(self), ("prefix_scorer_model", "prefix_source"))
        self.prefix_source_weights = parse_json_option("prefix_source_weights", self.prefix_source_weights)
        validate_fields(vars(self), ("prefix_source_weights", "prefix_dataset_fallback"))
        check_dataset_logps_strategy(self)
        check_teacher_url(self)
        validate_fields(vars(self), ("prefix_teacher_base_url",))
        check_prefetch_sources(self)

    def _validate_grpo_compatibility(self):
        """Refuse GRPO options that SOUP cannot honour, before any model is loaded."""
        validate_fields(vars(self), ("loss_type",))
        check_relay_options(self)
        check_beam_search(self)
        check_sampling_settings(self)  # vllm_server: sampling filters only where exact prefix log-probs can be had
        validate_fields(vars(self), ("max_completion_length",))
        check_prefix_budget(self)
