"""Config tier: SOUPConfig defaults, validation messages, registry and CLI parsing; SOUPTrainer refusals.

Every refusal must be a ValueError (TypeError for a wrong config class) whose message names the option and the
allowed values, raised before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import trl
from testing_utils import SEQUENCE_LEVEL_OPTIONS
from transformers import HfArgumentParser
from trl import GRPOConfig

from trl_soup import SOUPConfig, SOUPTrainer, available_prefix_strategies, register_prefix_strategy
from trl_soup.truncation import _PREFIX_STRATEGIES

SOUP_FIELDS = (
    "prefix_strategy",
    "prefix_ratio",
    "prefix_entropy_top_k",
    "behavior_refresh_interval",
    "behavior_backend",
)


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# Every field SOUPConfig adds to GRPOConfig or redefines (another default or help), computed: a new field is covered
# at once.
_GRPO_FIELDS = {f.name: f for f in dataclasses.fields(GRPOConfig)}
ADDED_OR_CHANGED_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(SOUPConfig)
    if f.name not in _GRPO_FIELDS
    or _default(f) != _default(_GRPO_FIELDS[f.name])
    or f.metadata != _GRPO_FIELDS[f.name].metadata
)
# Plumbing (server address, timeouts, weight transfer, files): no paper section to cite. Every other SOUP field cites
# the paper (a section, equation, figure or appendix).
PLUMBING_FIELDS = (
    "behavior_server_base_url",
    "behavior_server_host",
    "behavior_server_port",
    "behavior_server_timeout",
    "behavior_server_connect_timeout",
    "behavior_server_max_retries",
    "behavior_refresh_method",
    "behavior_server_group_port",
    "behavior_server_token",
    "behavior_server_ca_file",
    "behavior_refresh_dir",
    "prefix_entropy_logprobs",
)
PAPER_REFERENCE = re.compile(r"\b(Sec\.|Eq\.|Fig\.|Appendix)")


def make_config(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", bf16=False)
    kwargs.update(overrides)
    return SOUPConfig(**kwargs)


def refused(tmp_path, **overrides) -> str:
    """The message of the ValueError that SOUPConfig(**overrides) raises."""
    with pytest.raises(ValueError) as info:
        make_config(tmp_path, **overrides)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ defaults


def test_defaults_follow_the_paper(tmp_path):
    config = make_config(tmp_path)
    # Paper Sec. 4: DAPO token-level loss with clip-higher and no KL term.
    assert config.loss_type == "dapo"
    assert config.epsilon == 0.2
    assert config.epsilon_high == 0.28
    assert config.beta == 0.0
    # Paper Sec. 3.2 / 3.3: ratio truncation at 0.5, top-k 32 for entropy truncation, T = 8, a local snapshot.
    assert config.prefix_strategy == "ratio"
    assert config.prefix_ratio == 0.5
    assert config.prefix_entropy_top_k == 32
    assert config.behavior_refresh_interval == 8
    assert config.behavior_backend == "local"
    # Defaults that SOUP relies on in GRPOConfig (a per-token ratio, no sequence mask).
    assert config.importance_sampling_level == "token"
    assert config.off_policy_mask_threshold is None
    assert config.use_vllm is False


def test_every_soup_field_has_help_citing_a_paper_section():
    fields = {f.name: f for f in dataclasses.fields(SOUPConfig)}
    for name in (*SOUP_FIELDS, "epsilon_high"):
        assert name in fields, name
        help_text = fields[name].metadata.get("help", "")
        assert "Sec." in help_text, f"{name}: help does not cite the paper section: {help_text!r}"
        assert "Default" in help_text, f"{name}: help does not state the default: {help_text!r}"


def test_every_added_or_changed_field_is_documented():
    """Help text with the default, an entry in the class docstring, a paper reference unless it is plumbing."""
    assert set(SOUP_FIELDS) | {"epsilon_high"} <= set(ADDED_OR_CHANGED_FIELDS)
    assert len(ADDED_OR_CHANGED_FIELDS) >= 19
    assert set(PLUMBING_FIELDS) <= set(ADDED_OR_CHANGED_FIELDS), "a plumbing field that SOUPConfig no longer has"
    fields = {f.name: f for f in dataclasses.fields(SOUPConfig)}
    docstring = SOUPConfig.__doc__
    for name in ADDED_OR_CHANGED_FIELDS:
        help_text = fields[name].metadata.get("help", "")
        assert "Default" in help_text, f"{name}: help does not state the default: {help_text!r}"
        assert re.search(rf"^ {{8}}{name} \(`", docstring, re.MULTILINE), f"{name}: not in SOUPConfig's docstring"
        if name in PLUMBING_FIELDS:
            assert not PAPER_REFERENCE.search(help_text), f"{name}: plumbing, cites the paper: {help_text!r}"
        else:
            assert PAPER_REFERENCE.search(help_text), f"{name}: help does not cite the paper: {help_text!r}"


def test_soup_config_is_a_grpo_config(tmp_path):
    assert isinstance(make_config(tmp_path), GRPOConfig)


# ------------------------------------------------------------------------------------------------ SOUP fields


def test_unknown_prefix_strategy_lists_the_registered_ones(tmp_path):
    message = refused(tmp_path, prefix_strategy="middle")
    assert "prefix_strategy" in message
    assert "'middle'" in message
    assert "'entropy'" in message and "'ratio'" in message


@pytest.mark.parametrize("strategy", ["ratio", "entropy"])
def test_builtin_prefix_strategies_accepted(tmp_path, strategy):
    assert make_config(tmp_path, prefix_strategy=strategy).prefix_strategy == strategy


@pytest.mark.parametrize("value", [-0.01, 1.01, 2, -1, float("nan"), float("inf")])
def test_prefix_ratio_out_of_range(tmp_path, value):
    message = refused(tmp_path, prefix_ratio=value)
    assert "prefix_ratio" in message
    assert "[0, 1]" in message


@pytest.mark.parametrize("value", ["0.5", None, True, False, [0.5]])
def test_prefix_ratio_not_a_number(tmp_path, value):
    # bool is an int subclass: True must not slip through as 1.0.
    message = refused(tmp_path, prefix_ratio=value)
    assert "prefix_ratio" in message
    assert "number in [0, 1]" in message


@pytest.mark.parametrize("value", [0, 0.0, 0.3, 1, 1.0])
def test_prefix_ratio_limits_accepted_and_stored_as_float(tmp_path, value):
    config = make_config(tmp_path, prefix_ratio=value)
    assert config.prefix_ratio == float(value)
    assert type(config.prefix_ratio) is float


@pytest.mark.parametrize("value", [0, -3, 2.0, 1.5, "32", True, None])
def test_prefix_entropy_top_k_invalid(tmp_path, value):
    message = refused(tmp_path, prefix_entropy_top_k=value)
    assert "prefix_entropy_top_k" in message
    assert "integer >= 1" in message


@pytest.mark.parametrize("value", [0, -1, 4.0, 2.5, "8", True, None])
def test_behavior_refresh_interval_invalid(tmp_path, value):
    message = refused(tmp_path, behavior_refresh_interval=value)
    assert "behavior_refresh_interval" in message
    assert "integer >= 1" in message


@pytest.mark.parametrize("value", [1, 0, "true"])
def test_old_logps_from_loss_forward_must_be_a_bool(tmp_path, value):
    message = refused(tmp_path, old_logps_from_loss_forward=value)
    assert "old_logps_from_loss_forward" in message
    assert "True, False" in message


@pytest.mark.parametrize("value", [1, 2, 16])
def test_behavior_refresh_interval_accepted(tmp_path, value):
    assert make_config(tmp_path, behavior_refresh_interval=value).behavior_refresh_interval == value


def test_prefix_entropy_top_k_one_accepted(tmp_path):
    assert make_config(tmp_path, prefix_entropy_top_k=1).prefix_entropy_top_k == 1


def test_unknown_behavior_backend(tmp_path):
    message = refused(tmp_path, behavior_backend="remote")
    assert "behavior_backend" in message
    assert "'remote'" in message
    assert "'local'" in message and "'vllm_server'" in message


def test_vllm_server_backend_accepted(tmp_path):
    config = make_config(tmp_path, behavior_backend="vllm_server", behavior_server_base_url="http://127.0.0.1:9")
    assert config.behavior_refresh_method == "disk" and config.prefix_entropy_logprobs == 20


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("behavior_refresh_method", "ftp", "'disk'"),
        ("behavior_server_port", 0, "[1, 65535]"),
        ("behavior_server_port", 70000, "[1, 65535]"),
        ("behavior_server_group_port", -1, "[1, 65535]"),
        ("behavior_server_timeout", 0, "> 0"),
        ("behavior_server_connect_timeout", -1, "> 0"),
        ("behavior_server_max_retries", -1, ">= 0"),
        ("prefix_entropy_logprobs", 0, ">= 1"),
        ("behavior_server_base_url", "127.0.0.1:8001", "http://"),
    ],
)
def test_behavior_server_fields_refused(tmp_path, field, value, allowed):
    message = refused(tmp_path, **{field: value})
    assert field in message and allowed in message


# ------------------------------------------------------------------------------------------------ GRPO options


@pytest.mark.parametrize("settings", SEQUENCE_LEVEL_OPTIONS)
def test_sequence_level_options_accepted(tmp_path, settings):
    """Defined with the mixed denominator of Eq. 5 (docs/equations.md); their loss is tested in test_grpo_options."""
    config = make_config(tmp_path, **settings)
    for key, value in settings.items():
        assert getattr(config, key) == value


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo"])
def test_loss_types_accepted(tmp_path, loss_type):
    assert make_config(tmp_path, loss_type=loss_type).loss_type == loss_type


def test_use_vllm_accepted_in_both_modes(tmp_path):
    for mode in ("colocate", "server"):
        config = make_config(tmp_path, use_vllm=True, vllm_mode=mode)
        assert config.use_vllm and config.vllm_mode == mode


def test_vllm_structured_outputs_regex_refused(tmp_path):
    message = refused(tmp_path, use_vllm=True, vllm_structured_outputs_regex=r"\d+")
    assert "vllm_structured_outputs_regex" in message
    assert "None" in message


def test_continuous_batching_refused(tmp_path):
    message = refused(tmp_path, use_transformers_continuous_batching=True)
    assert "use_transformers_continuous_batching" in message
    assert "False" in message


# ------------------------------------------------------------------------------------------------ registry


def test_registered_strategy_is_accepted(tmp_path):
    name = "test_config_first_quarter"
    assert name not in available_prefix_strategies()
    assert "prefix_strategy" in refused(tmp_path, prefix_strategy=name)  # refused before registration
    try:
        register_prefix_strategy(name)(
            lambda completion_ids, logps, entropies, mask, generator, args: mask.sum(1) // 4
        )
        assert name in available_prefix_strategies()
        assert make_config(tmp_path, prefix_strategy=name).prefix_strategy == name
        # The error for an unknown name now lists it too.
        assert f"'{name}'" in refused(tmp_path, prefix_strategy="nope")
    finally:
        _PREFIX_STRATEGIES.pop(name, None)
    assert name not in available_prefix_strategies()
    assert "prefix_strategy" in refused(tmp_path, prefix_strategy=name)


# ------------------------------------------------------------------------------------------------ CLI parsing

CLI = ["--prefix_ratio", "0.3", "--behavior_refresh_interval", "4", "--use_cpu", "--report_to", "none"]


def test_trl_parser(tmp_path):
    (config,) = trl.TrlParser((SOUPConfig,)).parse_args_and_config(args=[*CLI, "--output_dir", str(tmp_path / "o")])
    assert isinstance(config, SOUPConfig)
    assert config.prefix_ratio == 0.3
    assert config.behavior_refresh_interval == 4
    assert config.use_cpu is True
    assert config.prefix_strategy == "ratio" and config.behavior_backend == "local"  # untouched defaults


def test_hf_argument_parser(tmp_path):
    parser = HfArgumentParser((SOUPConfig,))
    (config,) = parser.parse_args_into_dataclasses(
        args=[*CLI, "--output_dir", str(tmp_path / "o"), "--prefix_strategy", "entropy", "--prefix_entropy_top_k", "8"]
    )
    assert config.prefix_ratio == 0.3
    assert config.behavior_refresh_interval == 4
    assert config.prefix_strategy == "entropy"
    assert config.prefix_entropy_top_k == 8
    assert isinstance(config.behavior_refresh_interval, int) and isinstance(config.prefix_entropy_top_k, int)


def test_parser_validates(tmp_path):
    parser = trl.TrlParser((SOUPConfig,))
    with pytest.raises(ValueError, match="behavior_refresh_interval"):
        parser.parse_args_and_config(
            args=[*CLI[:2], "--behavior_refresh_interval", "0", "--output_dir", str(tmp_path)]
        )
    with pytest.raises(ValueError, match="behavior_refresh_method"):
        parser.parse_args_and_config(args=["--behavior_refresh_method", "ftp", "--output_dir", str(tmp_path)])


# ------------------------------------------------------------------------------------------------ trainer refusals


def _reward(prompts, completions, **kwargs):
    return [0.0 for _ in completions]


def _tool(x: int) -> int:
    """Doubles x.

    Args:
        x: a number.
    """
    return 2 * x


class _Environment:
    def reset(self, **kwargs):
        return None


@pytest.mark.parametrize(
    "option, value",
    [("rollout_func", lambda prompts, trainer: {}), ("tools", [_tool]), ("environment_factory", _Environment)],
)
def test_trainer_refuses_before_loading_the_model(tmp_path, option, value):
    missing = tmp_path / "no-such-model"  # loading it would fail with OSError, not ValueError
    with pytest.raises(ValueError) as info:
        SOUPTrainer(model=str(missing), reward_funcs=_reward, args=make_config(tmp_path), **{option: value})
    message = str(info.value)
    assert option in message
    assert "Allowed value: None" in message
    assert not missing.exists()


def test_trainer_accepts_rollout_func_at_t1(tmp_path, make_model, tokenizer):
    """T = 1 is plain DAPO: SOUPTrainer takes what GRPOTrainer takes, and builds no behavior copy."""

    def rollout(prompts, trainer):
        return {}

    from datasets import Dataset

    trainer = SOUPTrainer(
        model=make_model(seed=0),
        reward_funcs=_reward,
        processing_class=tokenizer,
        args=make_config(tmp_path, behavior_refresh_interval=1),
        rollout_func=rollout,
        train_dataset=Dataset.from_dict({"prompt": ["1+1="] * 8}),
    )
    assert trainer.behavior is None and trainer.rollout_func is rollout


def test_trainer_model_path_would_fail_without_the_option(tmp_path):
    # Control for the test above: the same call without the refused option does try to load the path and fails
    # with an OSError (not a repository or folder), not SOUP's ValueError.
    missing = tmp_path / "no-such-model"
    with pytest.raises(OSError) as info:
        SOUPTrainer(model=str(missing), reward_funcs=_reward, args=make_config(tmp_path))
    assert "cannot be used with SOUPTrainer" not in str(info.value)


def test_trainer_needs_a_soup_config(tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", bf16=False)
    with pytest.raises(TypeError, match="SOUPConfig"):
        SOUPTrainer(model=str(tmp_path / "no-such-model"), reward_funcs=_reward, args=args)


def test_fsdp_refused(tmp_path):
    message = refused(tmp_path, fsdp="full_shard")
    assert "fsdp" in message and "DDP" in message


def test_deepspeed_zero3_accepted(tmp_path):
    # ZeRO-3 is supported (the local behavior copy is partitioned like TRL's reference model; tests/test_zero3.py).
    pytest.importorskip("deepspeed")
    zero3 = {
        "zero_optimization": {"stage": 3},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
    }
    config = make_config(tmp_path, deepspeed=zero3)
    assert config.deepspeed_plugin is not None and config.deepspeed_plugin.zero_stage == 3
    del config  # drop the global HF DeepSpeed config with it, so later models are not built under zero.Init


def test_peft_with_local_backend_under_zero3_refused_before_loading(tmp_path):
    pytest.importorskip("deepspeed")
    peft = pytest.importorskip("peft")
    zero3 = {
        "zero_optimization": {"stage": 3},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
    }
    config = make_config(tmp_path, deepspeed=zero3)
    missing = tmp_path / "no-such-model"  # loading it would fail with another error: the refusal comes first
    with pytest.raises(ValueError, match="peft_config with behavior_backend='local'.*ZeRO-3"):
        SOUPTrainer(model=str(missing), reward_funcs=_reward, args=config, peft_config=peft.LoraConfig(r=4))
    del config


@pytest.mark.parametrize("value", [0, -1, 10_000, 2.5])
def test_prefix_budget_refused(tmp_path, value):
    message = refused(tmp_path, prefix_strategy="fixed_budget", prefix_budget=value)
    assert "prefix_budget" in message and "max_completion_length" in message


def test_fixed_budget_is_registered_with_a_decode_budget(tmp_path):
    from trl_soup.truncation import behavior_decode_budget

    config = make_config(tmp_path, prefix_strategy="fixed_budget", prefix_budget=7)
    assert behavior_decode_budget("fixed_budget", config) == 7
    assert behavior_decode_budget("ratio", config) == config.max_completion_length  # full responses, then cut


@pytest.mark.parametrize("filters", [dict(top_p=0.9), dict(top_k=20), dict(min_p=0.05), dict(repetition_penalty=1.2)])
def test_vllm_server_filters_refused_at_temperature_not_one(tmp_path, filters):
    """The vllm_server backend's prefix log-probs are exact with a sampling filter only at temperature 1 (prompt
    log-probs of a re-scoring request); elsewhere SOUPConfig refuses it before any model loads."""
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, behavior_backend="vllm_server")
    name = next(iter(filters))
    with pytest.raises(ValueError, match=f"temperature=0.7 and {name}=.*Allowed: temperature=1.0"):
        SOUPConfig(**base, temperature=0.7, **filters)
    SOUPConfig(**base, temperature=1.0, **filters)  # re-scored exactly
    SOUPConfig(**base, temperature=0.7)  # no filter: the sampling log-probs are exact
    SOUPConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, temperature=0.7, **filters)  # local backend


def test_help_of_every_field_renders():
    """`--help` formats every help text with %-formatting (argparse): a bare '%' crashed
    `recipes/soup_toy.py --help`."""
    from trl import TrlParser

    text = TrlParser((SOUPConfig,)).format_help()
    for name in (*SOUP_FIELDS, *ADDED_OR_CHANGED_FIELDS):
        assert f"--{name}" in text, name


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["soup_toy.py", "soup_math.py"])
def test_recipe_help_exits_0(recipe):
    from launch import REPO, run_python

    done = run_python([REPO / "recipes" / recipe, "--help"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--behavior_refresh_interval" in done.stdout


# ---------------------------------------------------------------------------------------------- errors that come early


@pytest.mark.parametrize("strategy", ["ratio", "entropy"])
def test_prefix_budget_ignored_by_the_strategy_is_refused(tmp_path, strategy):
    message = refused(tmp_path, prefix_strategy=strategy, prefix_budget=5)
    assert "prefix_budget=5" in message and f"prefix_strategy={strategy!r} ignores it" in message
    assert "'fixed_budget'" in message


def test_nccl_refresh_refused_on_cpu(tmp_path):
    message = refused(tmp_path, behavior_backend="vllm_server", behavior_refresh_method="nccl")
    assert "behavior_refresh_method='nccl'" in message and "'disk'" in message
    make_config(tmp_path, behavior_backend="vllm_server", behavior_refresh_method="disk")


@pytest.mark.parametrize(
    "where", [dict(behavior_server_base_url="http://10.1.2.3:8001"), dict(behavior_server_host="gpu-node-7")]
)
def test_non_loopback_behavior_server_needs_a_token(tmp_path, where):
    message = refused(tmp_path, behavior_backend="vllm_server", **where)
    assert "dev-mode endpoints" in message and "TRL_SOUP_SERVER_TOKEN" in message  # more in tests/test_server_auth.py
    with pytest.warns(UserWarning, match="clear text"):
        make_config(tmp_path, behavior_backend="vllm_server", behavior_server_token="secret", **where)


def test_loopback_behavior_server_does_not_warn(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for url in ("http://127.0.0.1:8001", "http://localhost:9000", "http://[::1]:8001"):
            make_config(tmp_path, behavior_backend="vllm_server", behavior_server_base_url=url)


def test_lora_refresh_without_peft_refused_before_loading(tmp_path):
    missing = tmp_path / "no-such-model"
    args = make_config(tmp_path, behavior_backend="vllm_server", behavior_refresh_method="lora")
    with pytest.raises(ValueError, match="behavior_refresh_method='lora' needs a PEFT model"):
        SOUPTrainer(model=str(missing), reward_funcs=_reward, args=args)


def test_dataset_without_prompt_column_refused_with_the_columns_found(tmp_path):
    from datasets import Dataset

    missing = tmp_path / "no-such-model"
    data = Dataset.from_dict({"question": ["1+1="], "answer": ["2"]})
    with pytest.raises(ValueError, match=r"train_dataset has no 'prompt' column \(found: \['question', 'answer'\]\)"):
        SOUPTrainer(model=str(missing), reward_funcs=_reward, args=make_config(tmp_path), train_dataset=data)


@pytest.mark.parametrize(
    "overrides,option",
    [
        (dict(prefix_strategy="entropy", prefix_ratio=0.3), "prefix_ratio=0.3 is ignored: prefix_strategy='entropy'"),
        (
            dict(prefix_strategy="ratio", prefix_entropy_top_k=8),
            "prefix_entropy_top_k=8 is ignored: prefix_strategy='ratio'",
        ),
        (
            dict(behavior_server_port=9000),
            "behavior_server_port=9000 is ignored: it configures behavior_backend='vllm_server'",
        ),
        (dict(behavior_refresh_method="lora"), "behavior_refresh_method='lora' is ignored"),
    ],
)
def test_options_the_run_ignores_are_named(tmp_path, overrides, option):
    with pytest.warns(UserWarning, match=re.escape(option)):
        make_config(tmp_path, **overrides)


def test_no_ignored_option_warning_for_used_options(tmp_path, recwarn):
    make_config(tmp_path, prefix_strategy="ratio", prefix_ratio=0.3)
    make_config(tmp_path, prefix_strategy="entropy", prefix_entropy_top_k=8)
    make_config(tmp_path, behavior_backend="vllm_server", behavior_server_port=9000)
    assert [str(w.message) for w in recwarn if "is ignored" in str(w.message)] == []


# ------------------------------------------------------------------- values GRPOConfig accepts but SOUP cannot use
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(behavior_pool_size=2000), r"behavior_pool_size=2000 is invalid: it must be an integer in \[1, 32\]"),
        (dict(off_policy_mask_threshold=-1.0), "off_policy_mask_threshold=-1.0 is invalid: it must be a number >= 0"),
        (dict(epsilon_high=-0.1), "epsilon_high=-0.1 is invalid: it must be a number >= 0, or None"),
        (dict(importance_sampling_level="seq"), r"importance_sampling_level='seq'.*\['token', 'sequence'\]"),
        (
            dict(log_position_statistics="yes"),
            r"log_position_statistics='yes' is invalid. Allowed values: True, False",
        ),
        (
            dict(behavior_refresh_policy="adaptive", behavior_refresh_interval=4, behavior_refresh_min_interval=6),
            r"behavior_refresh_min_interval=6 is larger than behavior_refresh_interval=4.*Allowed values: 1 to 4",
        ),
    ],
)
def test_values_the_loss_cannot_use_are_refused(tmp_path, overrides, expected):
    """Each was accepted silently before (issue 24, item 6): a negative mask threshold or clip changed the loss, a
    misspelt level failed only at the first loss, "yes" passed for a bool, a minimum interval above T was ignored."""
    with pytest.raises(ValueError, match=expected):
        make_config(tmp_path, **overrides)


def test_bounds_accept_their_edges(tmp_path):
    config = make_config(
        tmp_path,
        behavior_pool_size=32,
        off_policy_mask_threshold=0.0,
        epsilon_high=None,
        behavior_refresh_policy="adaptive",
        behavior_refresh_interval=4,
        behavior_refresh_min_interval=4,
    )
    assert config.behavior_pool_size == 32 and config.behavior_refresh_min_interval == 4
