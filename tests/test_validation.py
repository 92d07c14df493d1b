"""trl_soup.validation: SOUPConfig's rules as pure functions, called here on plain values and namespaces (no
TrainingArguments is built, except in the last test, which checks that SOUPConfig applies the whole table)."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from trl_soup import validation as v
from trl_soup.pool import available_pool_samplings
from trl_soup.refresh import available_refresh_policies
from trl_soup.sources import available_prefix_sources
from trl_soup.truncation import available_prefix_strategies

# SOUPConfig's defaults (and TRL 1.16 GRPOConfig's, for the options SOUP reads), as plain values.
DEFAULTS = {
    "prefix_strategy": "ratio",
    "prefix_ratio": 0.5,
    "prefix_entropy_top_k": 32,
    "prefix_budget": None,
    "behavior_refresh_interval": 8,
    "behavior_refresh_policy": "fixed",
    "behavior_max_staleness": 0.02,
    "behavior_refresh_min_interval": 2,
    "behavior_pool_size": 1,
    "behavior_pool_sampling": "newest",
    "prefix_source": "behavior",
    "prefix_source_weights": None,
    "prefix_dataset_column": "reference_completion",
    "prefix_logps_column": None,
    "prefix_scorer_model": None,
    "prefix_dataset_fallback": "on_policy",
    "prefix_teacher_base_url": None,
    "behavior_backend": "local",
    "behavior_server_base_url": None,
    "behavior_server_host": "127.0.0.1",
    "behavior_server_port": 8001,
    "behavior_server_timeout": 240.0,
    "behavior_server_connect_timeout": 10.0,
    "behavior_server_max_retries": 3,
    "behavior_refresh_method": "disk",
    "behavior_server_token": None,
    "behavior_server_group_port": 51217,
    "behavior_refresh_dir": None,
    "prefix_entropy_logprobs": 20,
    "log_position_statistics": False,
    "behavior_prefetch": 0,
    "old_logps_from_loss_forward": None,
    "epsilon_high": 0.28,
    "off_policy_mask_threshold": None,
    "importance_sampling_level": "token",
    "loss_type": "dapo",
    "max_completion_length": 512,
    "use_vllm": False,
    "vllm_structured_outputs_regex": None,
    "use_transformers_continuous_batching": False,
    "fsdp": None,
    "generation_kwargs": None,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": None,
    "repetition_penalty": 1.0,
}


def args(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{**DEFAULTS, **overrides})


def refusal(function, *arguments) -> str:
    """The message of the ValueError that ``function(*arguments)`` raises."""
    with pytest.raises(ValueError) as info:
        function(*arguments)
    return str(info.value)


# ------------------------------------------------------------------------------------ one option at a time

ACCEPTED = {
    "prefix_strategy": ["ratio", "entropy", "fixed_budget"],
    "prefix_ratio": [0, 1, 0.0, 1.0, 0.3],
    "prefix_entropy_top_k": [1, 32],
    "behavior_refresh_interval": [1, 8],
    "behavior_refresh_policy": ["fixed", "adaptive"],
    "behavior_max_staleness": [0, 0.02, 5],
    "behavior_refresh_min_interval": [1, 100],
    "behavior_pool_size": [1, 32],
    "behavior_pool_sampling": ["newest", "uniform", "oldest"],
    "behavior_backend": ["local", "vllm_server"],
    "behavior_refresh_method": ["disk", "lora", "nccl"],
    "behavior_server_port": [1, 8001, 65535],
    "behavior_server_group_port": [1, 65535],
    "behavior_server_max_retries": [0, 3],
    "prefix_entropy_logprobs": [1, 20],
    "behavior_prefetch": [0, 2],
    "old_logps_from_loss_forward": [None, True, False],
    "behavior_server_timeout": [0.5, 240],
    "behavior_server_connect_timeout": [1e-3, 10.0],
    "behavior_server_base_url": [None, "http://127.0.0.1:8001", "https://example.org"],
    "prefix_scorer_model": [None, "org/name", "name", "/"],
    "prefix_source": ["behavior", "dataset", "teacher", "on_policy"],
    "prefix_source_weights": [None, {"behavior": 0.5, "dataset": 0.5}, {"behavior": 1, "teacher": 0}],
    "prefix_dataset_fallback": ["on_policy", "behavior"],
    "prefix_teacher_base_url": [None, "http://127.0.0.1:8002"],
    "importance_sampling_level": ["token", "sequence"],
    "epsilon_high": [None, 0, 0.28],
    "off_policy_mask_threshold": [None, 0.0, 2],
    "log_position_statistics": [True, False],
    "loss_type": list(v.LOSS_TYPES),
    "max_completion_length": [1, 256],
}

# (option, value, the whole message)
REFUSED = [
    ("prefix_ratio", 1.5, "prefix_ratio=1.5 is invalid: it must be a number in [0, 1]."),
    ("prefix_ratio", -0.1, "prefix_ratio=-0.1 is invalid: it must be a number in [0, 1]."),
    ("prefix_ratio", True, "prefix_ratio=True is invalid: it must be a number in [0, 1]."),
    ("prefix_ratio", "0.5", "prefix_ratio='0.5' is invalid: it must be a number in [0, 1]."),
    ("prefix_ratio", math.nan, "prefix_ratio=nan is invalid: it must be a number in [0, 1]."),
    ("prefix_entropy_top_k", 0, "prefix_entropy_top_k=0 is invalid: it must be an integer >= 1."),
    ("prefix_entropy_top_k", 2.0, "prefix_entropy_top_k=2.0 is invalid: it must be an integer >= 1."),
    (
        "behavior_refresh_interval",
        True,
        "behavior_refresh_interval=True is invalid: it must be an integer >= 1 (T, in generation batches; 1 means "
        "plain on-policy DAPO).",
    ),
    ("behavior_max_staleness", -1, "behavior_max_staleness=-1 is invalid: it must be a number >= 0 (nats)."),
    ("behavior_max_staleness", math.nan, "behavior_max_staleness=nan is invalid: it must be a number >= 0 (nats)."),
    (
        "behavior_refresh_min_interval",
        0,
        "behavior_refresh_min_interval=0 is invalid: it must be an integer >= 1 (generation batches; T bounds it "
        "above).",
    ),
    (
        "behavior_pool_size",
        33,
        "behavior_pool_size=33 is invalid: it must be an integer in [1, 32] (snapshots in the behavior pool, each "
        "allocated at start and logged; 1 is the paper's one copy).",
    ),
    (
        "behavior_backend",
        "vllm",
        "behavior_backend='vllm' is not supported. Allowed values: ['local', 'vllm_server'].",
    ),
    (
        "behavior_refresh_method",
        "ssh",
        "behavior_refresh_method='ssh' is not supported. Allowed values: ['disk', 'lora', 'nccl'].",
    ),
    (
        "behavior_server_port",
        0,
        "behavior_server_port=0 is invalid: it must be an integer in [1, 65535] (a TCP port).",
    ),
    (
        "behavior_server_group_port",
        65536,
        "behavior_server_group_port=65536 is invalid: it must be an integer in [1, 65535] (a TCP port).",
    ),
    ("behavior_server_max_retries", -1, "behavior_server_max_retries=-1 is invalid: it must be an integer >= 0."),
    ("prefix_entropy_logprobs", 0, "prefix_entropy_logprobs=0 is invalid: it must be an integer >= 1."),
    (
        "behavior_prefetch",
        -1,
        "behavior_prefetch=-1 is invalid: it must be an integer >= 0 (generation batches sampled ahead; 0 disables "
        "prefetching).",
    ),
    (
        "old_logps_from_loss_forward",
        1,
        "old_logps_from_loss_forward=1 is invalid. Allowed values: None (default: from the loss forward where "
        "possible), True, False.",
    ),
    ("behavior_server_timeout", 0, "behavior_server_timeout=0 is invalid: it must be a number of seconds > 0."),
    (
        "behavior_server_connect_timeout",
        None,
        "behavior_server_connect_timeout=None is invalid: it must be a number of seconds > 0.",
    ),
    (
        "behavior_server_base_url",
        "127.0.0.1:8001",
        "behavior_server_base_url='127.0.0.1:8001' is invalid: it must start with http:// or https://.",
    ),
    (
        "prefix_scorer_model",
        "/no/such/model",
        "prefix_scorer_model='/no/such/model' is a path, and no directory is there. Allowed values: a local model "
        "directory, a Hub model id (org/name), or None (the initial policy scores the references).",
    ),
    (
        "prefix_dataset_fallback",
        "teacher",
        "prefix_dataset_fallback='teacher' is not supported. Allowed values: ['on_policy', 'behavior'].",
    ),
    (
        "prefix_teacher_base_url",
        "ftp://host",
        "prefix_teacher_base_url='ftp://host' is invalid: it must start with http:// or https://.",
    ),
    (
        "importance_sampling_level",
        "seq",
        "importance_sampling_level='seq' is not supported. Allowed values: ['token', 'sequence'].",
    ),
    ("epsilon_high", -0.1, "epsilon_high=-0.1 is invalid: it must be a number >= 0, or None."),
    (
        "off_policy_mask_threshold",
        True,
        "off_policy_mask_threshold=True is invalid: it must be a number >= 0, or None.",
    ),
    ("log_position_statistics", "yes", "log_position_statistics='yes' is invalid. Allowed values: True, False."),
    (
        "loss_type",
        "ppo",
        f"loss_type='ppo' is not a loss type of TRL 1.16. Allowed values: {list(v.LOSS_TYPES)} (paper default "
        "'dapo').",
    ),
    (
        "max_completion_length",
        None,
        "max_completion_length=None is invalid for SOUP: the continuation budget is max_completion_length - "
        "len(prefix), so it must be an integer >= 1.",
    ),
]

REGISTRIES = [
    ("prefix_strategy", available_prefix_strategies, "strategy", "register_prefix_strategy"),
    ("behavior_refresh_policy", available_refresh_policies, "policy", "register_refresh_policy"),
    ("behavior_pool_sampling", available_pool_samplings, "rule", "register_pool_sampling"),
    ("prefix_source", available_prefix_sources, "source", "register_prefix_source"),
]


def test_every_option_of_the_table_is_tested():
    assert set(ACCEPTED) == set(v.FIELD_RULES)
    assert {name for name, _, _ in REFUSED} | {name for name, *_ in REGISTRIES} | {"prefix_source_weights"} == set(
        v.FIELD_RULES
    )


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_values(name):
    for value in ACCEPTED[name]:
        v.check_field(name, value)


@pytest.mark.parametrize("name,value,message", REFUSED, ids=[f"{n}={x!r}" for n, x, _ in REFUSED])
def test_refused_values_name_the_option_and_the_allowed_values(name, value, message):
    assert refusal(v.check_field, name, value) == message


@pytest.mark.parametrize("name,names,kind,register", REGISTRIES, ids=[r[0] for r in REGISTRIES])
def test_registry_options_list_the_registered_names(name, names, kind, register):
    message = refusal(v.check_field, name, "no-such-name")
    assert message == (
        f"{name}='no-such-name' is not a registered {kind}. Allowed values: {names()} (register more with "
        f"trl_soup.{register})."
    )
    assert names()  # the message lists something to choose from


def test_registry_is_read_at_each_check():
    known = ["a"]
    rule = v.registered(lambda: known, "thing", "register_thing")
    with pytest.raises(
        ValueError, match=re.escape("Allowed values: ['a'] (register more with trl_soup.register_thing)")
    ):
        rule("option", "b")
    known.append("b")
    rule("option", "b")


def test_integers_refuse_bools_and_floats_and_say_their_bounds():
    v.Int(0)("n", 0)
    v.Int(1, 3)("n", 3)
    for value in (True, False, 1.0, "1", None):
        with pytest.raises(ValueError, match=r"it must be an integer >= 0"):
            v.Int(0)("n", value)
    assert (
        refusal(v.Int(1, 3, note=" (a unit)"), "n", 4) == "n=4 is invalid: it must be an integer in [1, 3] (a unit)."
    )


def test_optional_numbers_keep_their_nan_behaviour():
    """epsilon_high and off_policy_mask_threshold refuse only values < 0 (NaN passes, as it always did); the
    staleness and the timeouts refuse NaN."""
    v.check_field("epsilon_high", math.nan)
    with pytest.raises(ValueError, match="behavior_server_timeout=nan"):
        v.check_field("behavior_server_timeout", math.nan)


def test_source_weights_must_map_registered_sources_to_nonnegative_weights():
    known = available_prefix_sources()
    for weights in ({}, {"behavior": -1}, {"behavior": 0}, {"behavior": True}, {"nope": 1}, [1], "behavior"):
        assert refusal(v.check_field, "prefix_source_weights", weights) == (
            f"prefix_source_weights={weights!r} is invalid: it must map prefix sources ({known}) to weights >= 0 "
            "with a positive sum, e.g. {'behavior': 0.5, 'dataset': 0.5}."
        )


def test_json_options_are_parsed_and_bad_json_is_named():
    assert v.parse_json_option("prefix_source_weights", '{"behavior": 1}') == {"behavior": 1}
    weights = {"dataset": 1}
    assert v.parse_json_option("prefix_source_weights", weights) is weights
    assert v.parse_json_option("prefix_source_weights", None) is None
    assert refusal(v.parse_json_option, "prefix_source_weights", "{bad") == (
        "prefix_source_weights='{bad' is not valid JSON."
    )


def test_scorer_model_accepts_an_existing_directory(tmp_path):
    v.check_field("prefix_scorer_model", str(tmp_path))
    assert v.is_local_path("./model") and v.is_local_path("a/b/c") and not v.is_local_path("org/name")
    with pytest.raises(ValueError, match="is a path, and no directory is there"):
        v.check_field("prefix_scorer_model", str(tmp_path / "missing"))


def test_validate_fields_checks_in_order_and_skips_absent_options():
    v.validate_fields({})
    v.validate_fields(DEFAULTS)
    bad = {**DEFAULTS, "behavior_backend": "x", "prefix_ratio": 2}
    with pytest.raises(ValueError, match=r"^prefix_ratio=2 "):  # the table's order: prefix_ratio comes first
        v.validate_fields(bad)
    with pytest.raises(ValueError, match=r"^behavior_backend='x' "):  # the order asked for
        v.validate_fields(bad, ["behavior_backend", "prefix_ratio"])
    v.validate_fields(bad, ["prefix_strategy"])
    with pytest.raises(KeyError):
        v.validate_fields({}, ["prefix_ratio"])


# ------------------------------------------------------------------------------------ rules across options


def test_prefetch_needs_the_vllm_server_backend():
    v.check_prefetch_backend(args(behavior_prefetch=2, behavior_backend="vllm_server"))
    v.check_prefetch_backend(args(behavior_prefetch=0))
    message = refusal(v.check_prefetch_backend, args(behavior_prefetch=2))
    assert message.startswith("behavior_prefetch=2 needs behavior_backend='vllm_server' (got 'local')")
    assert message.endswith("Allowed values with the local backend: 0.")


def test_prefetch_serves_the_behavior_source_only():
    v.check_prefetch_sources(args(behavior_prefetch=2))
    v.check_prefetch_sources(args(prefix_source="dataset"))
    message = refusal(v.check_prefetch_sources, args(behavior_prefetch=2, prefix_source="dataset"))
    assert message == (
        "behavior_prefetch=2 prefetches the behavior copy's samples only; this run draws prefixes from ['dataset']. "
        "Allowed: behavior_prefetch=0 with other prefix sources."
    )


def test_nccl_refresh_needs_cuda():
    v.check_nccl_needs_cuda("nccl", use_cpu=False, cuda_available=True)
    for method in ("disk", "lora", None):
        v.check_nccl_needs_cuda(method, use_cpu=True, cuda_available=False)
    for use_cpu, cuda in ((True, True), (False, False), (True, False)):
        assert refusal(v.check_nccl_needs_cuda, "nccl", use_cpu, cuda) == (
            "behavior_refresh_method='nccl' needs CUDA GPUs (TRL's NCCL weight transfer), and this run has none "
            f"(use_cpu={use_cpu}, CUDA available: {cuda}). Allowed values on CPU: 'disk', or 'lora' with a PEFT model."
        )


def test_lora_refresh_needs_peft():
    v.check_lora_needs_peft("lora", is_peft=True)
    v.check_lora_needs_peft("disk", is_peft=False)
    assert refusal(v.check_lora_needs_peft, "lora", False) == (
        "behavior_refresh_method='lora' needs a PEFT model (pass peft_config or a PeftModel). Allowed values for a "
        "fully fine-tuned model: 'disk', 'nccl'."
    )


def test_entropy_cannot_cut_dataset_prefixes_scored_by_a_logps_column():
    v.check_dataset_logps_strategy(args(prefix_source="dataset", prefix_logps_column="logps"))
    v.check_dataset_logps_strategy(args(prefix_source="dataset", prefix_strategy="entropy"))
    v.check_dataset_logps_strategy(args(prefix_logps_column="logps", prefix_strategy="entropy"))  # no dataset source
    weights = {"behavior": 1, "dataset": 1}
    message = refusal(
        v.check_dataset_logps_strategy,
        args(prefix_source_weights=weights, prefix_logps_column="logps", prefix_strategy="entropy"),
    )
    assert message.startswith("prefix_strategy='entropy' cannot cut dataset prefixes scored by prefix_logps_column=")
    assert "Allowed: prefix_logps_column=None" in message


def test_teacher_source_needs_its_url():
    v.check_teacher_url(args(prefix_source="teacher", prefix_teacher_base_url="http://127.0.0.1:8002"))
    v.check_teacher_url(args())
    message = refusal(v.check_teacher_url, args(prefix_source_weights={"behavior": 1, "teacher": 1}))
    assert message.startswith("prefix_source 'teacher' needs prefix_teacher_base_url")


def test_pool_on_a_server_needs_lora_refresh():
    v.check_pool_refresh_method(args(behavior_pool_size=4))
    v.check_pool_refresh_method(
        args(behavior_pool_size=4, behavior_backend="vllm_server", behavior_refresh_method="lora")
    )
    v.check_pool_refresh_method(args(behavior_backend="vllm_server"))
    message = refusal(v.check_pool_refresh_method, args(behavior_pool_size=4, behavior_backend="vllm_server"))
    assert message.startswith(
        "behavior_pool_size=4 with behavior_backend='vllm_server' needs behavior_refresh_method='lora' (got 'disk')"
    )
    assert message.endswith(
        "Allowed: behavior_refresh_method='lora' with a PEFT model, behavior_backend='local', or behavior_pool_size=1."
    )


def test_prefix_budget_only_with_fixed_budget_and_within_the_completion_length():
    v.check_prefix_budget_strategy(args(prefix_strategy="fixed_budget", prefix_budget=8))
    v.check_prefix_budget_strategy(args(prefix_strategy="entropy"))
    for strategy in ("ratio", "entropy"):
        assert refusal(v.check_prefix_budget_strategy, args(prefix_strategy=strategy, prefix_budget=8)) == (
            f"prefix_budget=8 is used only by prefix_strategy='fixed_budget'; prefix_strategy={strategy!r} ignores "
            f"it. Allowed: prefix_budget=None with {strategy!r}, or prefix_strategy='fixed_budget'."
        )
    v.check_prefix_budget(args(prefix_budget=512))
    v.check_prefix_budget(args(prefix_budget=None, max_completion_length=1))
    for budget in (0, 513, True, 2.5):
        assert refusal(v.check_prefix_budget, args(prefix_budget=budget)) == (
            f"prefix_budget={budget!r} is invalid: it must be an integer in [1, 512] (tokens of behavior prefix, at "
            "most max_completion_length)."
        )


def test_minimum_refresh_interval_at_most_t():
    v.check_refresh_min_interval(args(behavior_refresh_policy="adaptive", behavior_refresh_min_interval=8))
    v.check_refresh_min_interval(args(behavior_refresh_min_interval=9))  # "fixed" ignores it (and warns)
    message = refusal(
        v.check_refresh_min_interval,
        args(behavior_refresh_policy="adaptive", behavior_refresh_interval=4, behavior_refresh_min_interval=6),
    )
    assert message.startswith("behavior_refresh_min_interval=6 is larger than behavior_refresh_interval=4 (T)")
    assert message.endswith("Allowed values: 1 to 4.")


@pytest.mark.parametrize(
    "overrides,start,allowed",
    [
        (dict(use_vllm=True, vllm_structured_outputs_regex="a+"), "vllm_structured_outputs_regex='a+'", "None"),
        (dict(use_transformers_continuous_batching=True), "use_transformers_continuous_batching=True", "False"),
        (dict(fsdp=["full_shard"]), "fsdp=['full_shard']", "fsdp disabled (use DDP or DeepSpeed ZeRO-1/2/3)"),
    ],
)
def test_relay_options_refused_when_t_is_above_one(overrides, start, allowed):
    v.check_relay_options(args(behavior_refresh_interval=1, **overrides))  # T = 1: plain DAPO, as GRPOTrainer
    message = refusal(v.check_relay_options, args(**overrides))
    assert message.startswith(start)
    assert message.endswith(f"{allowed} (or behavior_refresh_interval=1: plain DAPO, as GRPOTrainer).")


def test_beam_search_refused_when_t_is_above_one():
    v.check_beam_search(args(generation_kwargs={"num_beams": 1, "num_beam_groups": None}))
    v.check_beam_search(args(behavior_refresh_interval=1, generation_kwargs={"num_beams": 4}))
    v.check_beam_search(args(generation_kwargs="not a dict"))
    message = refusal(v.check_beam_search, args(generation_kwargs={"num_beam_groups": 2}))
    assert message.startswith("generation_kwargs={'num_beam_groups': 2, ...} cannot be used with behavior_refresh_")
    assert message.endswith(
        "Allowed: num_beam_groups=1 (sampling), or behavior_refresh_interval=1 (plain DAPO, as GRPOTrainer)."
    )


def test_sampling_settings_rule_has_one_home():
    from trl_soup.behavior import vllm_server

    assert vllm_server.check_sampling_settings is v.check_sampling_settings
    assert vllm_server.sampling_filters is v.sampling_filters
    v.check_sampling_settings(args(behavior_backend="vllm_server", temperature=0.7))
    v.check_sampling_settings(args(behavior_backend="vllm_server", top_p=0.9))
    v.check_sampling_settings(args(temperature=0.7, top_k=20))  # the local backend scores any setting exactly
    message = refusal(v.check_sampling_settings, args(behavior_backend="vllm_server", temperature=0.7, top_k=20))
    assert message.startswith("behavior_backend='vllm_server' with temperature=0.7 and top_k=20: ")
    assert "Allowed: temperature=1.0 with any top_p / top_k / min_p / repetition_penalty" in message


def test_server_addresses(monkeypatch):
    monkeypatch.delenv("TRL_SOUP_SERVER_TOKEN", raising=False)
    assert list(v.server_address_warnings(args(behavior_backend="vllm_server"))) == []
    assert list(v.server_address_warnings(args(behavior_server_host="10.0.0.1"))) == []  # local backend: no server
    with pytest.raises(ValueError, match=r"^behavior_server_host: the server at http://10\.0\.0\.1:8001 is not on"):
        list(v.server_address_warnings(args(behavior_backend="vllm_server", behavior_server_host="10.0.0.1")))
    teacher = args(
        prefix_source="teacher", prefix_teacher_base_url="http://10.0.0.2:8002", behavior_server_token="t" * 32
    )
    (warning,) = v.server_address_warnings(teacher)
    assert warning.startswith("prefix_teacher_base_url: the token for the server at http://10.0.0.2:8002 crosses")
    assert v.behavior_server_url(None, "h", 1) == "http://h:1"
    assert v.behavior_server_url("https://x", "h", 1) == "https://x"


def test_ignored_options_are_named_with_the_reason():
    assert v.ignored_options(args(), DEFAULTS) == []
    ignored = v.ignored_options(
        args(prefix_strategy="entropy", prefix_ratio=0.3, behavior_server_port=9000, behavior_max_staleness=1.0),
        DEFAULTS,
    )
    assert ignored == [
        ("prefix_ratio", "prefix_strategy='entropy' cuts at a high-entropy token, not at a ratio"),
        ("behavior_server_port", "it configures behavior_backend='vllm_server', and this run uses 'local'"),
        ("behavior_max_staleness", "behavior_refresh_policy='fixed' refreshes every behavior_refresh_interval"),
    ]
    ignored = v.ignored_options(
        args(prefix_source="on_policy", prefix_source_weights={"behavior": 1}, prefix_dataset_column="c"), DEFAULTS
    )
    assert ignored == [
        ("prefix_dataset_column", "it configures prefix_source 'dataset', and this run draws from ['behavior']"),
        ("prefix_source", "prefix_source_weights chooses each row's source"),
    ]
    assert v.ignored_options(args(behavior_pool_sampling="uniform"), DEFAULTS) == [
        ("behavior_pool_sampling", "behavior_pool_size=1 keeps one snapshot, which writes every row")
    ]


# ------------------------------------------------------------------------------------ SOUPConfig applies the table


def test_soup_config_applies_every_rule_with_the_same_message(tmp_path):
    """Each refused value of REFUSED is refused by SOUPConfig with the message of the pure rule (SOUPConfig checks
    every option of the table), and DEFAULTS are SOUPConfig's own."""
    import dataclasses

    from trl_soup import SOUPConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SOUPConfig)}
    assert {name: defaults[name] for name in DEFAULTS if name != "fsdp"} == {
        name: value for name, value in DEFAULTS.items() if name != "fsdp"
    }
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", bf16=False)
    for name, value, message in REFUSED:
        with pytest.raises(ValueError) as info:
            SOUPConfig(**base, **{name: value})
        assert str(info.value) == message, name
