"""SOUPConfig: GRPOConfig plus the SOUP fields, with validation that fails before any model is loaded."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field, fields

import torch
from trl import GRPOConfig

from .pool import available_pool_samplings
from .refresh import available_refresh_policies
from .server_auth import TOKEN_ENV, check_server_address, client_token
from .sources import available_prefix_sources, source_names
from .truncation import available_prefix_strategies

# Backends for the behavior policy (trl_soup.behavior).
BEHAVIOR_BACKENDS = ("local", "vllm_server")
BEHAVIOR_REFRESH_METHODS = ("disk", "lora", "nccl")
# Options of the vllm_server backend, and of the truncation strategies, that another choice ignores.
SERVER_FIELDS = (
    "behavior_server_base_url",
    "behavior_server_host",
    "behavior_server_port",
    "behavior_server_timeout",
    "behavior_server_connect_timeout",
    "behavior_server_max_retries",
    "behavior_refresh_method",
    "behavior_server_group_port",
    "behavior_refresh_dir",
    "prefix_entropy_logprobs",
)
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


def _is_local_path(value: str) -> bool:
    """Whether a model name can only be a local path: absolute, relative to . / .. / ~, or deeper than a Hub id's
    org/name."""
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1 or os.sep != "/" and os.sep in value


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

    prefix_strategy: str = field(
        default="ratio",
        metadata={
            "help": "How each behavior response is truncated into a prefix (paper Sec. 3.3): 'ratio' keeps the first "
            "round(len * prefix_ratio) tokens; 'entropy' cuts before a token drawn uniformly among the "
            "prefix_entropy_top_k highest-entropy positions; or any name registered with "
            "trl_soup.register_prefix_strategy. Default 'ratio'."
        },
    )
    prefix_ratio: float = field(
        default=0.5,
        metadata={
            "help": "Fraction of the behavior response kept as prefix by the 'ratio' strategy, in [0, 1] (paper Sec. "
            "3.3 and 4: 0.5 for Qwen2.5-Math-7B, 0.3 for DeepSeek-R1-Distill-Qwen-1.5B; 0 is on-policy). Default 0.5."
        },
    )
    prefix_entropy_top_k: int = field(
        default=32,
        metadata={
            "help": "Number of highest-entropy positions of the behavior response among which the 'entropy' strategy "
            "draws its cut uniformly (paper Sec. 3.3, k = 32). Default 32."
        },
    )
    prefix_budget: int | None = field(
        default=None,
        metadata={
            "help": "Token budget of the behavior prefix for prefix_strategy='fixed_budget' (paper Appendix C: decode "
            "only the prefix that is kept, instead of a full response that is then cut). None: "
            "round(prefix_ratio * max_completion_length). Default None."
        },
    )
    behavior_refresh_interval: int = field(
        default=8,
        metadata={
            "help": "T, in generation batches: the behavior snapshot is refreshed from the learner every T batches; "
            "the batch right after a refresh is on-policy and batches 2..T are relay batches (paper Sec. 3.2, "
            "ablation over T in {1, 2, 4, 8, 16}; best T = 8 for Qwen2.5-Math-7B). T = 1 is plain DAPO. Default 8."
        },
    )
    behavior_refresh_policy: str = field(
        default="fixed",
        metadata={
            "help": "When the behavior copy is refreshed (paper Sec. 4.3 asks for an automatic T): 'fixed' every "
            "behavior_refresh_interval batches (the paper); 'adaptive' also once the last relay batch's staleness "
            "(mean KL(pi_behavior || pi_theta) estimate per prefix token) exceeds behavior_max_staleness, never "
            "sooner than behavior_refresh_min_interval batches after a refresh and never later than T; or a name "
            "registered with trl_soup.register_refresh_policy. Default 'fixed'."
        },
    )
    behavior_max_staleness: float = field(
        default=0.02,
        metadata={
            "help": "behavior_refresh_policy='adaptive': refresh once the staleness of the last relay batch exceeds "
            "this many nats per prefix token (paper Sec. 4.3; an estimate of KL(pi_behavior || pi_theta), "
            "docs/equations.md). Default 0.02."
        },
    )
    behavior_refresh_min_interval: int = field(
        default=2,
        metadata={
            "help": "Policies other than 'fixed': no refresh sooner than this many generation batches after the last "
            "one, so every window has at least one relay batch when it is 2 or more (paper Sec. 4.3). Default 2."
        },
    )
    behavior_pool_size: int = field(
        default=1,
        metadata={
            "help": "K: the behavior policy is a pool of the K most recent snapshots (each refresh overwrites the "
            "oldest) and each relay row takes its prefix from one member (behavior_pool_sampling), with that "
            "member's log-probs as its denominators (extends the single snapshot of Sec. 3.2, as the paper's "
            "Limitations ask). 1 is the paper's single snapshot. The local backend keeps K full copies (memory grows "
            "K-fold) or K PEFT adapters; vllm_server needs behavior_refresh_method='lora' (K adapters on the "
            "server). Default 1."
        },
    )
    behavior_pool_sampling: str = field(
        default="newest",
        metadata={
            "help": "behavior_pool_size > 1: which member writes each relay row: 'newest' (the copy of Sec. 3.2), "
            "'uniform' (a member drawn uniformly per row), 'oldest', or a name registered with "
            "trl_soup.register_pool_sampling. Default 'newest'."
        },
    )
    prefix_source: str = field(
        default="behavior",
        metadata={
            "help": "What writes the relay prefixes: 'behavior' (the historical copy of Sec. 3.2), 'dataset' (each "
            "row's reference completion, prefix_dataset_column), 'teacher' (a model on its own vLLM server, "
            "prefix_teacher_base_url), 'on_policy' (no prefix), or a name registered with "
            "trl_soup.register_prefix_source (the paper's Limitations ask for heterogeneous sources). Default "
            "'behavior'."
        },
    )
    prefix_source_weights: dict | str | None = field(
        default=None,
        metadata={
            "help": "Draw each relay row's prefix source among several, e.g. {'behavior': 0.5, 'dataset': 0.5} (a "
            "JSON string on the command line); prefix_source is then not used. Logged per source as "
            "soup/source/<name>/... (beyond Sec. 3.2). Default None."
        },
    )
    prefix_dataset_column: str = field(
        default="reference_completion",
        metadata={
            "help": "prefix_source 'dataset': the column holding each prompt's reference completion (a string, "
            "tokenised without special tokens and followed by EOS; a list of token ids, kept as they are; or chat "
            "messages, whose assistant content is used). The prefix is cut from it by prefix_strategy (Sec. 3.3). "
            "Default 'reference_completion'."
        },
    )
    prefix_logps_column: str | None = field(
        default=None,
        metadata={
            "help": "prefix_source 'dataset': a column of per-token log-probs of the reference (token ids, sampled "
            "by a known model): the prefix denominators of Eq. 5. None: the frozen scorer's log-probs stand in for "
            "pi_behavior (prefix_scorer_model; docs/equations.md for the bias). Default None."
        },
    )
    prefix_scorer_model: str | None = field(
        default=None,
        metadata={
            "help": "prefix_source 'dataset' without prefix_logps_column: the model whose log-probs score the "
            "references (Eq. 5's prefix denominator); it must share the learner's tokenizer. None: the initial "
            "policy (a frozen copy of the learner as the trainer is built). Default None."
        },
    )
    prefix_dataset_fallback: str = field(
        default="on_policy",
        metadata={
            "help": "prefix_source 'dataset': who writes the rows without a reference: 'on_policy' (no prefix, the "
            "current policy writes the row) or 'behavior' (the historical copy of Sec. 3.2). Default 'on_policy'."
        },
    )
    prefix_teacher_base_url: str | None = field(
        default=None,
        metadata={
            "help": "prefix_source 'teacher': base URL of the teacher's vLLM server (python -m "
            "trl_soup.serve_behavior --model TEACHER), e.g. 'http://127.0.0.1:8002'. Never refreshed; its sampling "
            "log-probs are the prefix denominators of Eq. 5; its tokenizer must be the learner's. Default None."
        },
    )
    behavior_backend: str = field(
        default="local",
        metadata={
            "help": "Where the behavior policy runs (paper Sec. 3.2 keeps a historical copy). 'local': a frozen copy "
            "in the training process, a second adapter for PEFT models; 'vllm_server': a vLLM server of its own, "
            "refreshed every T batches (behavior_refresh_method). Default 'local'."
        },
    )
    behavior_server_base_url: str | None = field(
        default=None,
        metadata={
            "help": "vllm_server backend: base URL of the behavior server, e.g. 'http://127.0.0.1:8001'. If None, "
            "behavior_server_host and behavior_server_port are used. Default None."
        },
    )
    behavior_server_host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "vllm_server backend: host of the behavior server when no base URL is given. Default '127.0.0.1'."
        },
    )
    behavior_server_port: int = field(
        default=8001,
        metadata={"help": "vllm_server backend: port of the behavior server when no base URL is given. Default 8001."},
    )
    behavior_server_timeout: float = field(
        default=240.0,
        metadata={
            "help": "vllm_server backend: seconds to wait for the behavior server to answer at start; past that, "
            "training stops with an error naming the address. Default 240."
        },
    )
    behavior_server_connect_timeout: float = field(
        default=10.0,
        metadata={
            "help": "vllm_server backend: seconds to try a connection to the behavior server before the model is "
            "loaded; an address where nothing listens fails within this time. A server still loading its model "
            "passes (it holds its port), and is then waited for up to behavior_server_timeout. Default 10."
        },
    )
    behavior_server_max_retries: int = field(
        default=3,
        metadata={
            "help": "vllm_server backend: retries of a failed request (with exponential back-off) before training "
            "stops with an error. Default 3."
        },
    )
    behavior_refresh_method: str = field(
        default="disk",
        metadata={
            "help": "vllm_server backend: how the server gets the learner's weights every T batches. 'disk': saved "
            "(merged under PEFT) and reloaded by the server, works on CPU; 'lora': PEFT only, the adapter is loaded "
            "under a new name; 'nccl': TRL's weight transfer (GPU). Default 'disk'."
        },
    )
    behavior_server_token: str | None = field(
        default=None,
        metadata={
            "help": "vllm_server backend and the 'teacher' prefix source: the token of servers started with one "
            f"(trl-soup serve-behavior with {TOKEN_ENV} or --token-file), sent as 'Authorization: Bearer' on every "
            f"request. None: read {TOKEN_ENV} from the environment (preferred: a command-line flag shows in `ps`). "
            "Needed for a server off this machine's loopback. Never logged nor saved: to_dict and repr show a "
            "placeholder, and pickled configs (training_args.bin) hold None. Default None."
        },
    )
    behavior_server_ca_file: str | None = field(
        default=None,
        metadata={
            "help": "vllm_server backend and the 'teacher' prefix source with an https:// URL: a file of CA "
            "certificates that verify the server (for a self-signed server, its certificate). None: the system's "
            "CA certificates. Default None."
        },
    )
    behavior_server_group_port: int = field(
        default=51217,
        metadata={
            "help": "vllm_server backend with behavior_refresh_method='nccl': port of the weight-update group "
            "(distinct from TRL's vllm_group_port). Default 51217."
        },
    )
    behavior_refresh_dir: str | None = field(
        default=None,
        metadata={
            "help": "vllm_server backend with 'disk' or 'lora' refresh: where weights are written for the server to "
            "read; must be visible to the server. Default None: <output_dir>/behavior_refresh."
        },
    )
    prefix_entropy_logprobs: int = field(
        default=20,
        metadata={
            "help": "vllm_server backend with prefix_strategy='entropy': number of top log-probs requested per token "
            "to estimate the behavior entropy; see docs/deviations.md for the estimate and its bound. Default 20."
        },
    )
    log_position_statistics: bool = field(
        default=False,
        metadata={
            "help": "Log entropy and clip ratio per tenth of relative token position (10 bins) (soup/position/...), "
            "the training analysis of paper Fig. 5; plot with recipes/plot_position_statistics.py. Costs one small "
            "all-reduce per step. Default False."
        },
    )
    behavior_prefetch: int = field(
        default=0,
        metadata={
            "help": "Number of upcoming generation batches whose behavior responses are sampled in the background "
            "while the current step trains (vllm_server backend only; never across a refresh, whose snapshot does "
            "not exist yet). Samples are the same as without prefetching (seeded per generation batch). The cost "
            "the paper reports (Sec. 5, 72.75 vs 92.63 s/step) is mostly this decoding on the critical path. "
            "0 disables it. Default 0."
        },
    )
    old_logps_from_loss_forward: bool | None = field(
        default=None,
        metadata={
            "help": "When generation and optimisation are aligned (num_iterations=1, steps_per_generation <= "
            "gradient_accumulation_steps, no vLLM importance-sampling correction), TRL skips its pi_old forward "
            "because pi_old equals the weights of the loss forward. None (the default) or True: SOUP skips it on "
            "relay batches too and takes the continuation's pi_old log-probs from the loss forward (detached), "
            "building the Eq. 5 denominator inside the loss; the batch then carries old_per_token_logps=None, as "
            "TRL's does. Same loss, one forward pass fewer per relay batch. Where TRL computes pi_old itself it "
            "is used (True then warns). False: a separate pi_old forward, so old_per_token_logps is in every "
            "relay batch. Default None."
        },
    )
    # Paper Sec. 4: DAPO with clip-higher. GRPOConfig already defaults to loss_type="dapo", epsilon=0.2, beta=0.0.
    epsilon_high: float | None = field(
        default=0.28,
        metadata={
            "help": "Upper clipping epsilon (clip-higher, DAPO). SOUP's paper uses 0.28 (Sec. 4). Default 0.28."
        },
    )

    @property
    def behavior_server_url(self) -> str:
        """The behavior server's base URL: ``behavior_server_base_url``, else built from host and port."""
        return self.behavior_server_base_url or f"http://{self.behavior_server_host}:{self.behavior_server_port}"

    def __repr__(self):
        # @dataclass would write every field, the server token included; TrainingArguments.__str__ masks `*_token`.
        return str(self)

    def __getstate__(self):
        """Pickled copies (checkpoints' ``training_args.bin``; ``copy.deepcopy`` too) hold no server token: their
        ``behavior_server_token`` is None, so they read ``TRL_SOUP_SERVER_TOKEN`` like an unset field."""
        return {**self.__dict__, "behavior_server_token": None}

    def __post_init__(self):
        # SOUP's own fields first, so a typo there is reported before anything else happens.
        self._validate_soup_fields()
        self._validate_loss_bounds()
        self._check_server_addresses()
        super().__post_init__()
        self._validate_grpo_compatibility()
        self._warn_ignored_options()

    def _require_int(self, name: str, minimum: int, maximum: int | None = None, note: str = "") -> None:
        value = getattr(self, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            allowed = f"an integer in [{minimum}, {maximum}]" if maximum is not None else f"an integer >= {minimum}"
            raise ValueError(f"{name}={value!r} is invalid: it must be {allowed}{note}.")

    def _validate_soup_fields(self):
        known = available_prefix_strategies()
        if self.prefix_strategy not in known:
            raise ValueError(
                f"prefix_strategy={self.prefix_strategy!r} is not a registered strategy. Allowed values: {known} "
                "(register more with trl_soup.register_prefix_strategy)."
            )
        if (
            isinstance(self.prefix_ratio, bool)
            or not isinstance(self.prefix_ratio, (int, float))
            or not (0.0 <= float(self.prefix_ratio) <= 1.0)
        ):
            raise ValueError(f"prefix_ratio={self.prefix_ratio!r} is invalid: it must be a number in [0, 1].")
        self.prefix_ratio = float(self.prefix_ratio)
        self._require_int("prefix_entropy_top_k", 1)
        self._require_int(
            "behavior_refresh_interval", 1, note=" (T, in generation batches; 1 means plain on-policy DAPO)"
        )
        policies = available_refresh_policies()
        if self.behavior_refresh_policy not in policies:
            raise ValueError(
                f"behavior_refresh_policy={self.behavior_refresh_policy!r} is not a registered policy. Allowed "
                f"values: {policies} (register more with trl_soup.register_refresh_policy)."
            )
        staleness = self.behavior_max_staleness
        if isinstance(staleness, bool) or not isinstance(staleness, (int, float)) or not staleness >= 0:
            raise ValueError(f"behavior_max_staleness={staleness!r} is invalid: it must be a number >= 0 (nats).")
        self._require_int("behavior_refresh_min_interval", 1, note=" (generation batches; T bounds it above)")
        self._require_int(
            "behavior_pool_size",
            1,
            MAX_POOL_SIZE,
            note=" (snapshots in the behavior pool, each allocated at start and logged; 1 is the paper's one copy)",
        )
        samplings = available_pool_samplings()
        if self.behavior_pool_sampling not in samplings:
            raise ValueError(
                f"behavior_pool_sampling={self.behavior_pool_sampling!r} is not a registered rule. Allowed values: "
                f"{samplings} (register more with trl_soup.register_pool_sampling)."
            )
        for name, allowed in (
            ("behavior_backend", BEHAVIOR_BACKENDS),
            ("behavior_refresh_method", BEHAVIOR_REFRESH_METHODS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported. Allowed values: {list(allowed)}.")
        self._require_int("behavior_server_port", 1, 65535, note=" (a TCP port)")
        self._require_int("behavior_server_group_port", 1, 65535, note=" (a TCP port)")
        self._require_int("behavior_server_max_retries", 0)
        self._require_int("prefix_entropy_logprobs", 1)
        self._require_int("behavior_prefetch", 0, note=" (generation batches sampled ahead; 0 disables prefetching)")
        if self.behavior_prefetch > 0 and self.behavior_backend != "vllm_server":
            raise ValueError(
                f"behavior_prefetch={self.behavior_prefetch} needs behavior_backend='vllm_server' (got "
                f"{self.behavior_backend!r}): the local copy would have to generate in the training process while it "
                "trains, which gains nothing on shared cores and deadlocks ZeRO-3's collectives. Allowed values with "
                "the local backend: 0."
            )
        if self.old_logps_from_loss_forward is not None and not isinstance(self.old_logps_from_loss_forward, bool):
            raise ValueError(
                f"old_logps_from_loss_forward={self.old_logps_from_loss_forward!r} is invalid. "
                "Allowed values: None (default: from the loss forward where possible), True, False."
            )
        for name in ("behavior_server_timeout", "behavior_server_connect_timeout"):
            timeout = getattr(self, name)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
                raise ValueError(f"{name}={timeout!r} is invalid: it must be a number of seconds > 0.")
        url = self.behavior_server_base_url
        if url is not None and not str(url).startswith(("http://", "https://")):
            raise ValueError(f"behavior_server_base_url={url!r} is invalid: it must start with http:// or https://.")
        if self.behavior_backend == "vllm_server":
            if self.behavior_refresh_method == "nccl" and (self.use_cpu or not torch.cuda.is_available()):
                raise ValueError(
                    "behavior_refresh_method='nccl' needs CUDA GPUs (TRL's NCCL weight transfer), and this run has "
                    f"none (use_cpu={self.use_cpu}, CUDA available: {torch.cuda.is_available()}). Allowed values "
                    "on CPU: 'disk', or 'lora' with a PEFT model."
                )
        self._validate_prefix_sources()
        if (
            self.behavior_pool_size > 1
            and self.behavior_backend == "vllm_server"
            and (self.behavior_refresh_method != "lora")
        ):
            raise ValueError(
                f"behavior_pool_size={self.behavior_pool_size} with behavior_backend='vllm_server' needs "
                f"behavior_refresh_method='lora' (got {self.behavior_refresh_method!r}): a server holds one set of "
                "base weights, so the pool's snapshots are LoRA adapters loaded side by side. Allowed: "
                "behavior_refresh_method='lora' with a PEFT model, behavior_backend='local', or behavior_pool_size=1."
            )
        if self.prefix_budget is not None and self.prefix_strategy in ("ratio", "entropy"):
            raise ValueError(
                f"prefix_budget={self.prefix_budget!r} is used only by prefix_strategy='fixed_budget'; "
                f"prefix_strategy={self.prefix_strategy!r} ignores it. Allowed: prefix_budget=None with "
                f"{self.prefix_strategy!r}, or prefix_strategy='fixed_budget'."
            )

    def _validate_loss_bounds(self):
        """Values a GRPOConfig accepts but the loss or a SOUP rule cannot use: refused before any model work."""
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(
                f"importance_sampling_level={self.importance_sampling_level!r} is not supported. Allowed values: "
                f"{list(IMPORTANCE_SAMPLING_LEVELS)}."
            )
        for name in ("epsilon_high", "off_policy_mask_threshold"):  # None: off (epsilon_high: = epsilon)
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name}={value!r} is invalid: it must be a number >= 0, or None.")
        if not isinstance(self.log_position_statistics, bool):
            raise ValueError(
                f"log_position_statistics={self.log_position_statistics!r} is invalid. Allowed values: True, False."
            )
        interval, minimum = self.behavior_refresh_interval, self.behavior_refresh_min_interval
        if self.behavior_refresh_policy != "fixed" and minimum > interval:
            raise ValueError(
                f"behavior_refresh_min_interval={minimum} is larger than behavior_refresh_interval={interval} (T): "
                f"the refresh policy {self.behavior_refresh_policy!r} may refresh no sooner than the minimum and no "
                f"later than T. Allowed values: 1 to {interval}."
            )

    def _check_server_addresses(self):
        """Refuse a behavior or teacher server off the loopback without a token; warn when the token would cross the
        network in clear text (the rule: :func:`trl_soup.server_auth.check_server_address`)."""
        servers = []
        if self.behavior_backend == "vllm_server":
            option = "behavior_server_base_url" if self.behavior_server_base_url else "behavior_server_host"
            servers.append((self.behavior_server_url, option))
        if "teacher" in source_names(self):
            servers.append((self.prefix_teacher_base_url, "prefix_teacher_base_url"))
        has_token = bool(servers) and client_token(self.behavior_server_token) is not None  # checks its form too
        for url, option in servers:
            warning = check_server_address(url, has_token, option)
            if warning:
                warnings.warn(warning, UserWarning, stacklevel=4)

    def _validate_prefix_sources(self):
        scorer = self.prefix_scorer_model
        if isinstance(scorer, str) and _is_local_path(scorer) and not os.path.isdir(os.path.expanduser(scorer)):
            raise ValueError(
                f"prefix_scorer_model={scorer!r} is a path, and no directory is there. Allowed values: a local model "
                "directory, a Hub model id (org/name), or None (the initial policy scores the references)."
            )
        known = available_prefix_sources()
        if self.prefix_source not in known:
            raise ValueError(
                f"prefix_source={self.prefix_source!r} is not a registered source. Allowed values: {known} (register "
                "more with trl_soup.register_prefix_source)."
            )
        weights = self.prefix_source_weights
        if isinstance(weights, str):
            try:
                weights = self.prefix_source_weights = json.loads(weights)
            except json.JSONDecodeError:
                raise ValueError(f"prefix_source_weights={weights!r} is not valid JSON.") from None
        if weights is not None:
            valid = (
                isinstance(weights, dict)
                and weights
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in weights.values())
            )
            if not valid or sum(weights.values()) <= 0 or not set(weights) <= set(known):
                raise ValueError(
                    f"prefix_source_weights={weights!r} is invalid: it must map prefix sources ({known}) to weights "
                    ">= 0 with a positive sum, e.g. {'behavior': 0.5, 'dataset': 0.5}."
                )
        used = set(source_names(self))
        if self.prefix_dataset_fallback not in PREFIX_DATASET_FALLBACKS:
            raise ValueError(
                f"prefix_dataset_fallback={self.prefix_dataset_fallback!r} is not supported. Allowed values: "
                f"{list(PREFIX_DATASET_FALLBACKS)}."
            )
        if "dataset" in used and self.prefix_logps_column is not None and self.prefix_strategy == "entropy":
            raise ValueError(
                f"prefix_strategy='entropy' cannot cut dataset prefixes scored by prefix_logps_column="
                f"{self.prefix_logps_column!r}: a log-prob column has no entropies. Allowed: prefix_logps_column=None "
                "(the scorer's forward gives log-probs and entropies), or prefix_strategy 'ratio' / 'fixed_budget'."
            )
        if "teacher" in used and not self.prefix_teacher_base_url:
            raise ValueError(
                "prefix_source 'teacher' needs prefix_teacher_base_url, the teacher's vLLM server (e.g. "
                "'http://127.0.0.1:8002', started with python -m trl_soup.serve_behavior --model TEACHER)."
            )
        url = self.prefix_teacher_base_url
        if url is not None and not str(url).startswith(("http://", "https://")):
            raise ValueError(f"prefix_teacher_base_url={url!r} is invalid: it must start with http:// or https://.")
        if self.behavior_prefetch > 0 and used != {"behavior"}:
            raise ValueError(
                f"behavior_prefetch={self.behavior_prefetch} prefetches the behavior copy's samples only; this run "
                f"draws prefixes from {sorted(used)}. Allowed: behavior_prefetch=0 with other prefix sources."
            )

    def _warn_ignored_options(self):
        """A warning, naming the option, for each SOUP option set to a non-default value that this run ignores."""
        names = SERVER_FIELDS + STRATEGY_FIELDS + REFRESH_POLICY_FIELDS + POOL_FIELDS + DATASET_SOURCE_FIELDS
        defaults = {f.name: f.default for f in fields(SOUPConfig) if f.name in names}
        ignored = []
        if self.prefix_strategy == "entropy" and self.prefix_ratio != defaults["prefix_ratio"]:
            ignored.append(("prefix_ratio", "prefix_strategy='entropy' cuts at a high-entropy token, not at a ratio"))
        if self.prefix_strategy in ("ratio", "fixed_budget") and (
            self.prefix_entropy_top_k != defaults["prefix_entropy_top_k"]
        ):
            ignored.append(("prefix_entropy_top_k", f"prefix_strategy={self.prefix_strategy!r} does not use entropy"))
        if self.behavior_backend == "local":
            for name in SERVER_FIELDS:
                if getattr(self, name) != defaults[name]:
                    ignored.append((name, "it configures behavior_backend='vllm_server', and this run uses 'local'"))
        if self.behavior_refresh_policy == "fixed":
            for name in REFRESH_POLICY_FIELDS:
                if getattr(self, name) != defaults[name]:
                    ignored.append((name, "behavior_refresh_policy='fixed' refreshes every behavior_refresh_interval"))
        if self.behavior_pool_size == 1 and self.behavior_pool_sampling != defaults["behavior_pool_sampling"]:
            ignored.append(
                ("behavior_pool_sampling", "behavior_pool_size=1 keeps one snapshot, which writes every row")
            )
        used = source_names(self)
        if "dataset" not in used:
            for name in DATASET_SOURCE_FIELDS:
                if getattr(self, name) != defaults[name]:
                    ignored.append((name, f"it configures prefix_source 'dataset', and this run draws from {used}"))
        if self.prefix_source_weights and self.prefix_source != "behavior":
            ignored.append(("prefix_source", "prefix_source_weights chooses each row's source"))
        for name, reason in ignored:
            warnings.warn(f"{name}={getattr(self, name)!r} is ignored: {reason}.", UserWarning, stacklevel=4)

    def _validate_grpo_compatibility(self):
        """Refuse GRPO options that SOUP cannot honour, before any model is loaded."""
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"loss_type={self.loss_type!r} is not a loss type of TRL 1.16. Allowed values: "
                f"{list(LOSS_TYPES)} (paper default 'dapo')."
            )
        # Options that only relay batches cannot honour: refused when T > 1; T = 1 is plain DAPO, where SOUPTrainer
        # accepts whatever GRPOTrainer does.
        relay = self.behavior_refresh_interval > 1
        at_t1 = " (or behavior_refresh_interval=1: plain DAPO, as GRPOTrainer)"
        if relay and self.use_vllm and self.vllm_structured_outputs_regex is not None:
            raise ValueError(
                f"vllm_structured_outputs_regex={self.vllm_structured_outputs_regex!r} cannot be used with SOUP: on "
                "relay batches vLLM writes only the continuation after a behavior prefix, so the regex would "
                f"constrain the continuation alone, not the whole completion. Allowed value: None{at_t1}."
            )
        if relay and self.use_transformers_continuous_batching:
            raise ValueError(
                "use_transformers_continuous_batching=True is not supported on relay batches in this release. "
                f"Allowed value: False{at_t1}."
            )
        if relay and self.fsdp:
            raise ValueError(
                f"fsdp={self.fsdp!r} is not supported by SOUPTrainer in this release: the behavior copy and its "
                "refresh are written for unsharded or DeepSpeed ZeRO-3 parameters. Allowed values: fsdp disabled "
                f"(use DDP or DeepSpeed ZeRO-1/2/3){at_t1}."
            )
        generation = self.generation_kwargs if isinstance(self.generation_kwargs, dict) else {}
        for name in ("num_beams", "num_beam_groups"):
            beams = generation.get(name, 1)
            if relay and beams is not None and beams != 1:
                raise ValueError(
                    f"generation_kwargs={{'{name}': {beams!r}, ...}} cannot be used with behavior_refresh_interval="
                    f"{self.behavior_refresh_interval}: beam search is no sampling distribution, so a behavior prefix "
                    "found by it has no pi_behavior for the denominator of Eq. 5. Allowed: "
                    f"{name}=1 (sampling), or behavior_refresh_interval=1 (plain DAPO, as GRPOTrainer)."
                )
        from .behavior.vllm_server import check_sampling_settings

        check_sampling_settings(self)  # vllm_server: sampling filters only where exact prefix log-probs can be had
        if self.max_completion_length is None or self.max_completion_length < 1:
            raise ValueError(
                f"max_completion_length={self.max_completion_length!r} is invalid for SOUP: the continuation budget "
                "is max_completion_length - len(prefix), so it must be an integer >= 1."
            )
        if self.prefix_budget is not None:
            self._require_int(
                "prefix_budget",
                1,
                self.max_completion_length,
                note=" (tokens of behavior prefix, at most max_completion_length)",
            )
