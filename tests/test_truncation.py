"""The registry of prefix (truncation) strategies (paper Sec. 3.3: the strategy is pluggable)."""

from __future__ import annotations

import types

import pytest
import torch

from trl_soup import truncation
from trl_soup.truncation import (
    available_prefix_strategies,
    compute_prefix_lengths,
    get_prefix_strategy,
    register_prefix_strategy,
)

ARGS = types.SimpleNamespace(prefix_ratio=0.5, prefix_entropy_top_k=2)


@pytest.fixture(autouse=True)
def restore_registry():
    """Whatever a test registers or overwrites is undone afterwards."""
    saved = dict(truncation._PREFIX_STRATEGIES)
    try:
        yield
    finally:
        truncation._PREFIX_STRATEGIES.clear()
        truncation._PREFIX_STRATEGIES.update(saved)


def _batch(lengths, width=8):
    """Right-padded behavior responses with the given numbers of valid tokens."""
    batch = len(lengths)
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    completion_ids = torch.arange(batch * width).reshape(batch, width) * mask
    logps = -torch.rand(batch, width, generator=torch.Generator().manual_seed(0)) * mask
    entropies = torch.rand(batch, width, generator=torch.Generator().manual_seed(1)) * mask
    return completion_ids, logps, entropies, mask


def _run(name, lengths=(5, 4, 0), args=ARGS, seed=0, **batch_kwargs):
    completion_ids, logps, entropies, mask = _batch(list(lengths), **batch_kwargs)
    generator = torch.Generator().manual_seed(seed)
    return compute_prefix_lengths(name, completion_ids, logps, entropies, mask, generator, args)


def test_builtins_registered():
    names = available_prefix_strategies()
    assert "ratio" in names and "entropy" in names
    assert names == sorted(names)
    assert callable(get_prefix_strategy("ratio")) and callable(get_prefix_strategy("entropy"))


def test_ratio_strategy_reads_prefix_ratio():
    # floor(len * 0.5 + 0.5): 5 -> 3, 4 -> 2, 0 -> 0
    out = _run("ratio", (5, 4, 0))
    assert out.dtype == torch.long and out.tolist() == [3, 2, 0]
    # floor(len * 0.3 + 0.5): 7 -> 2, 5 -> 2, 8 -> 2
    args = types.SimpleNamespace(prefix_ratio=0.3, prefix_entropy_top_k=2)
    assert _run("ratio", (7, 5, 8), args=args).tolist() == [2, 2, 2]


def test_entropy_strategy_reads_top_k_and_uses_generator():
    completion_ids, logps, _, mask = _batch([4, 3, 0], width=5)
    entropies = torch.tensor([[0.1, 3.0, 2.0, 0.5, 9.0], [1.0, 0.2, 5.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0, 9.0]])
    # top_k = 1: the valid argmax, whatever the seed (padding entropies of 9 are never chosen)
    args = types.SimpleNamespace(prefix_ratio=0.5, prefix_entropy_top_k=1)
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        out = compute_prefix_lengths("entropy", completion_ids, logps, entropies, mask, generator, args)
        assert out.tolist() == [1, 2, 0]
    # top_k = 2 (ARGS): row 0 picks among {1, 2}, row 1 among {0, 2}; same seed, same result
    seen = [set(), set()]
    for seed in range(100):
        a = compute_prefix_lengths(
            "entropy", completion_ids, logps, entropies, mask, torch.Generator().manual_seed(seed), ARGS
        )
        b = compute_prefix_lengths(
            "entropy", completion_ids, logps, entropies, mask, torch.Generator().manual_seed(seed), ARGS
        )
        assert torch.equal(a, b)
        seen[0].add(int(a[0]))
        seen[1].add(int(a[1]))
        assert a[2] == 0
    assert seen == [{1, 2}, {0, 2}]


def test_user_strategy_with_decorator_is_found_and_used():
    calls = []

    @register_prefix_strategy("first_quarter")
    def first_quarter(completion_ids, logps, entropies, mask, generator, args):
        calls.append((completion_ids.shape, logps.shape, entropies.shape, mask.shape, generator, args))
        return mask.sum(1) // 4

    assert callable(first_quarter)  # the decorator returns the function itself
    assert get_prefix_strategy("first_quarter") is first_quarter
    assert "first_quarter" in available_prefix_strategies()
    completion_ids, logps, entropies, mask = _batch([8, 5, 3])
    generator = torch.Generator().manual_seed(0)
    out = compute_prefix_lengths("first_quarter", completion_ids, logps, entropies, mask, generator, ARGS)
    assert out.tolist() == [2, 1, 0]
    assert len(calls) == 1
    assert calls[0][:4] == ((3, 8), (3, 8), (3, 8), (3, 8))
    assert calls[0][4] is generator and calls[0][5] is ARGS


def test_user_strategy_can_read_its_own_config_field():
    register_prefix_strategy("fixed", lambda ids, lp, ent, mask, gen, args: torch.clamp(mask.sum(1), max=args.fixed))
    args = types.SimpleNamespace(prefix_ratio=0.5, prefix_entropy_top_k=2, fixed=3)
    assert _run("fixed", (5, 2, 0), args=args).tolist() == [3, 2, 0]


def test_user_strategy_returning_a_list_or_int32_is_accepted():
    register_prefix_strategy("as_list", lambda ids, lp, ent, mask, gen, args: [1, 0, 0])
    int32 = torch.tensor([2, 4, 0], dtype=torch.int32)
    register_prefix_strategy("as_int32", lambda ids, lp, ent, mask, gen, args: int32)
    assert _run("as_list").tolist() == [1, 0, 0]
    out = _run("as_int32")
    assert out.dtype == torch.long and out.tolist() == [2, 4, 0]  # the full length (4) and 0 are allowed


def test_unknown_name_lists_registered_names():
    register_prefix_strategy("mine", lambda *a: None)
    with pytest.raises(ValueError) as info:
        get_prefix_strategy("no_such_strategy")
    message = str(info.value)
    assert "no_such_strategy" in message
    for name in ("ratio", "entropy", "mine"):
        assert repr(name) in message
    with pytest.raises(ValueError, match="no_such_strategy"):
        _run("no_such_strategy")


def test_duplicate_registration_raises_unless_overwrite():
    def one(ids, lp, ent, mask, gen, args):
        return torch.ones(mask.size(0), dtype=torch.long) * (mask.sum(1) > 0)

    def zero(ids, lp, ent, mask, gen, args):
        return torch.zeros(mask.size(0), dtype=torch.long)

    register_prefix_strategy("dup", one)
    with pytest.raises(ValueError, match="overwrite=True"):
        register_prefix_strategy("dup", zero)
    with pytest.raises(ValueError, match="already registered"):
        register_prefix_strategy("dup")(zero)
    assert get_prefix_strategy("dup") is one  # the failed attempts changed nothing
    assert _run("dup").tolist() == [1, 1, 0]
    register_prefix_strategy("dup", zero, overwrite=True)
    assert get_prefix_strategy("dup") is zero
    assert _run("dup").tolist() == [0, 0, 0]
    # Built-ins are protected the same way.
    with pytest.raises(ValueError, match="ratio"):
        register_prefix_strategy("ratio", zero)


def test_overwriting_a_builtin_is_undone_by_the_fixture():
    # Paired with the test below: the registry is restored between tests.
    register_prefix_strategy("ratio", lambda *a: [0, 0, 0], overwrite=True)
    assert _run("ratio").tolist() == [0, 0, 0]


def test_builtin_ratio_is_intact_after_overwrite_test():
    assert _run("ratio").tolist() == [3, 2, 0]
    assert get_prefix_strategy("ratio") is truncation._ratio_strategy


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_names_rejected(name):
    with pytest.raises(ValueError, match="non-empty string"):
        register_prefix_strategy(name, lambda *a: None)


def test_non_callable_rejected():
    with pytest.raises(TypeError, match="callable"):
        register_prefix_strategy("not_callable", 42)
    assert "not_callable" not in available_prefix_strategies()


@pytest.mark.parametrize(
    "returned, match",
    [
        (torch.tensor([[1], [1], [0]]), r"shape \(3, 1\).*shape \(3,\)"),
        (torch.tensor([1, 1]), r"shape \(2,\).*shape \(3,\)"),
        (torch.tensor(1), r"shape \(\).*shape \(3,\)"),
        (torch.tensor([1.0, 1.0, 0.0]), "integer prefix lengths.*float32"),
        (torch.tensor([True, False, False]), "integer prefix lengths.*bool"),
        (torch.tensor([-1, 0, 0]), r"outside \[0, response length\]"),
        (torch.tensor([6, 0, 0]), r"outside \[0, response length\]"),  # row 0 has 5 valid tokens
        (torch.tensor([0, 0, 1]), r"outside \[0, response length\]"),  # row 2 is empty
    ],
)
def test_compute_prefix_lengths_rejects_bad_output(returned, match):
    register_prefix_strategy("bad", lambda *a: returned)
    with pytest.raises(ValueError, match=match) as info:
        _run("bad", (5, 4, 0))
    assert "'bad'" in str(info.value)  # the message names the faulty strategy


def test_too_long_message_shows_lengths():
    register_prefix_strategy("too_long", lambda *a: torch.tensor([5, 5, 0]))
    with pytest.raises(ValueError) as info:
        _run("too_long", (5, 4, 0))
    message = str(info.value)
    assert "[5, 5, 0]" in message and "[5, 4, 0]" in message
