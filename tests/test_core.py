"""Pure math of trl_soup.core, against hand-computed values and limiting cases (no model needed).

Expected values are written out literally; none is recomputed with the formula under test.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from trl_soup.core import (
    build_prefix_mask,
    clipped_token_mask,
    continuation_budgets,
    dapo_token_loss,
    mixed_old_per_token_logps,
    segment_means,
    segment_sums,
    truncate_by_entropy,
    truncate_by_ratio,
)

LOG = math.log


# ---------------------------------------------------------------------------------------------------------------
# Sec. 3.3 ratio truncation: k = floor(len * ratio + 0.5)  (round half up)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length, ratio, expected",
    [
        (5, 0.5, 3),  # 2.5 -> 3 (round half up; half-even or floor would give 2)
        (4, 0.5, 2),  # 2.0 -> 2
        (7, 0.3, 2),  # 2.1 -> 2 (ceil would give 3)
        (5, 0.3, 2),  # 1.5 -> 2
        (1, 0.5, 1),  # 0.5 -> 1 (half-even would give 0)
        (9, 0.5, 5),  # 4.5 -> 5 (half-even would give 4)
        (10, 0.3, 3),  # 3.0 -> 3
        (3, 0.7, 2),  # 2.1 -> 2
        (6, 0.0, 0),
        (6, 1.0, 6),
        (0, 0.5, 0),
        (0, 1.0, 0),
    ],
)
def test_truncate_by_ratio_hand_cases(length, ratio, expected):
    out = truncate_by_ratio(torch.tensor([length]), ratio)
    assert out.tolist() == [expected]


def test_truncate_by_ratio_batch_and_dtype():
    out = truncate_by_ratio(torch.tensor([5, 4, 7, 0, 1], dtype=torch.int32), 0.5)
    assert out.dtype == torch.long
    assert out.tolist() == [3, 2, 4, 0, 1]  # 2.5, 2.0, 3.5, 0.0, 0.5 all rounded half up
    assert truncate_by_ratio(torch.tensor([5, 4, 7]), 0.0).tolist() == [0, 0, 0]
    assert truncate_by_ratio(torch.tensor([5, 4, 7]), 1.0).tolist() == [5, 4, 7]


@pytest.mark.parametrize("ratio", [-0.1, 1.01, 2.0, float("nan")])
def test_truncate_by_ratio_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        truncate_by_ratio(torch.tensor([5]), ratio)


# ---------------------------------------------------------------------------------------------------------------
# Sec. 3.3 entropy truncation: cut before a token drawn uniformly among the top-k valid entropy positions
# ---------------------------------------------------------------------------------------------------------------


def _draws(entropies, mask, top_k, seeds):
    """One cut per generator seed, for a single-row input."""
    cuts = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        cuts.append(int(truncate_by_entropy(entropies, mask, top_k, generator)[0]))
    return cuts


def test_entropy_cut_is_uniform_over_exactly_the_top_k_valid_positions():
    # Valid positions 0..6; position 7 is padding with a huge entropy that must never be chosen.
    # Top-4 valid entropies: 5.0 (pos 3), 3.0 (pos 5), 2.0 (pos 1), 0.3 (pos 2).
    entropies = torch.tensor([[0.1, 2.0, 0.3, 5.0, 0.2, 3.0, 0.05, 1e9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    n = 800
    cuts = _draws(entropies, mask, top_k=4, seeds=range(n))
    counts = Counter(cuts)
    # Exactly the top-k set: never the padded position 7, never one past the chosen token ({2, 3, 4, 6} if the
    # cut were after it), never a low-entropy position.
    assert set(counts) == {1, 2, 3, 5}
    # Uniform: each about n / 4 = 200; chi-square with 3 degrees of freedom, 21.1 is the p = 1e-4 quantile.
    expected = n / 4
    chi2 = sum((counts[p] - expected) ** 2 / expected for p in (1, 2, 3, 5))
    assert chi2 < 21.1, counts
    for p in (1, 2, 3, 5):
        assert 0.18 < counts[p] / n < 0.32, counts


def test_entropy_cut_is_uniform_within_one_batch():
    # Each row gets its own draw from the same generator.
    rows = 2000
    entropies = torch.tensor([[0.0, 9.0, 1.0, 8.0, 7.0, 0.5]]).repeat(rows, 1)
    mask = torch.ones(rows, 6, dtype=torch.long)
    cuts = truncate_by_entropy(entropies, mask, top_k=3, generator=torch.Generator().manual_seed(0))
    counts = Counter(cuts.tolist())
    assert set(counts) == {1, 3, 4}
    for p in (1, 3, 4):
        assert abs(counts[p] / rows - 1 / 3) < 0.05, counts


def test_entropy_never_cuts_at_a_masked_position_even_with_huge_entropy():
    entropies = torch.tensor([[0.1, 0.2, 50.0, 60.0], [70.0, 0.4, 0.3, 80.0]])
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]])  # second row: a hole at 0 and padding at 3
    seen = [set(), set()]
    for seed in range(200):
        cut = truncate_by_entropy(entropies, mask, top_k=4, generator=torch.Generator().manual_seed(seed))
        seen[0].add(int(cut[0]))
        seen[1].add(int(cut[1]))
    assert seen == [{0, 1}, {1, 2}]


def test_entropy_top_k_larger_than_valid_length_uses_all_valid_positions():
    entropies = torch.tensor([[3.0, 1.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    cuts = _draws(entropies, mask, top_k=32, seeds=range(300))
    counts = Counter(cuts)
    assert set(counts) == {0, 1, 2}
    for p in (0, 1, 2):
        assert 0.2 < counts[p] / 300 < 0.47, counts


def test_entropy_empty_rows_give_zero():
    entropies = torch.tensor([[5.0, 4.0, 3.0], [1.0, 9.0, 2.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[0, 0, 0], [1, 1, 1], [0, 0, 0]])
    for seed in range(20):
        cut = truncate_by_entropy(entropies, mask, top_k=2, generator=torch.Generator().manual_seed(seed))
        assert cut[0] == 0 and cut[2] == 0
        assert int(cut[1]) in {1, 2}
    # Zero-width completions.
    out = truncate_by_entropy(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.long), top_k=4)
    assert out.dtype == torch.long and out.tolist() == [0, 0]


def test_entropy_top_1_is_the_valid_argmax_deterministically():
    entropies = torch.tensor([[0.1, 0.9, 0.3, 0.0], [2.0, 0.5, 1.0, 0.0], [0.1, 0.2, 9.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]])  # row 2: the global argmax is padding
    for seed in range(10):
        out = truncate_by_entropy(entropies, mask, top_k=1, generator=torch.Generator().manual_seed(seed))
        assert out.dtype == torch.long
        assert out.tolist() == [1, 0, 1]
    assert truncate_by_entropy(entropies, mask, top_k=1).tolist() == [1, 0, 1]  # no generator needed


def test_entropy_ties_are_broken_by_position():
    # All valid entropies equal: the candidate set is the first k positions.
    entropies = torch.ones(1, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    assert set(_draws(entropies, mask, top_k=2, seeds=range(100))) == {0, 1}


def test_entropy_same_seed_same_result():
    entropies = torch.rand(64, 12, generator=torch.Generator().manual_seed(7))
    mask = torch.ones(64, 12, dtype=torch.long)
    mask[::3, 8:] = 0
    a = truncate_by_entropy(entropies, mask, top_k=5, generator=torch.Generator().manual_seed(123))
    b = truncate_by_entropy(entropies, mask, top_k=5, generator=torch.Generator().manual_seed(123))
    c = truncate_by_entropy(entropies, mask, top_k=5, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # 64 rows of 5 candidates: a collision would be a broken generator
    n_valid = mask.sum(1)
    assert bool((a >= 0).all()) and bool((a < n_valid).all())  # never the full length: a token is re-sampled


@pytest.mark.parametrize("top_k", [0, -1])
def test_entropy_rejects_bad_top_k(top_k):
    with pytest.raises(ValueError, match="top_k"):
        truncate_by_entropy(torch.ones(2, 3), torch.ones(2, 3), top_k=top_k)


@pytest.mark.parametrize(
    "entropies, mask",
    [
        (torch.ones(2, 3), torch.ones(2, 4)),
        (torch.ones(2, 3), torch.ones(3, 3)),
        (torch.ones(3), torch.ones(3)),
    ],
)
def test_entropy_rejects_shape_mismatch(entropies, mask):
    with pytest.raises(ValueError, match="entropies and mask"):
        truncate_by_entropy(entropies, mask, top_k=2)


# ---------------------------------------------------------------------------------------------------------------
# Eq. 4: o = [s_b, s_c] -> prefix mask
# ---------------------------------------------------------------------------------------------------------------


def test_build_prefix_mask_hand_cases():
    out = build_prefix_mask(torch.tensor([0, 2, 4, 1]), 4)
    assert out.dtype == torch.long
    assert out.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert build_prefix_mask(torch.tensor([3]), 5).tolist() == [[1, 1, 1, 0, 0]]
    assert build_prefix_mask(torch.tensor([0, 0]), 0).shape == (2, 0)


# ---------------------------------------------------------------------------------------------------------------
# Eq. 5: mixed denominator, behavior on the prefix and old on the continuation
# ---------------------------------------------------------------------------------------------------------------


def test_mixed_old_per_token_logps_hand_case():
    prefix_mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1]])
    behavior = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0], [-7.0, -8.0, -9.0]])
    old = torch.tensor([[-10.0, -20.0, -30.0], [-40.0, -50.0, -60.0], [-70.0, -80.0, -90.0]])
    out = mixed_old_per_token_logps(prefix_mask, behavior, old)
    assert out.tolist() == [[-1.0, -2.0, -30.0], [-40.0, -50.0, -60.0], [-7.0, -80.0, -9.0]]
    # A bool mask gives the same.
    assert torch.equal(mixed_old_per_token_logps(prefix_mask.bool(), behavior, old), out)


def test_mixed_old_per_token_logps_limits():
    behavior = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    old = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mixed_old_per_token_logps(torch.zeros(3, 5, dtype=torch.long), behavior, old), old)
    assert torch.equal(mixed_old_per_token_logps(torch.ones(3, 5, dtype=torch.long), behavior, old), behavior)


# ---------------------------------------------------------------------------------------------------------------
# Fig. 5 clip indicator
# ---------------------------------------------------------------------------------------------------------------


def test_clipped_token_mask_boundaries_exact():
    # eps = 0.25 is exact in binary: 0.75 and 1.25 are on the boundary and not clipped.
    coef = torch.tensor([[0.5, 0.75, 1.0, 1.25, 1.5]] * 3)
    advantages = torch.tensor([1.0, -1.0, 0.0])
    out = clipped_token_mask(coef, advantages, epsilon_low=0.25, epsilon_high=0.25)
    assert out.dtype == torch.bool
    assert out.tolist() == [
        [False, False, False, False, True],  # A > 0: only r > 1 + eps_high
        [True, False, False, False, False],  # A < 0: only r < 1 - eps_low
        [False, False, False, False, False],  # A = 0: nothing is clipped
    ]


def test_clipped_token_mask_clip_higher_paper_eps():
    # Paper: eps_low = 0.2, eps_high = 0.28 (clip-higher). Boundaries 0.8 and 1.28 are not clipped.
    coef = torch.tensor([[0.79, 0.8, 1.2, 1.28, 1.29], [0.79, 0.8, 1.2, 1.28, 1.29]])
    out = clipped_token_mask(coef, torch.tensor([[2.0], [-0.5]]), epsilon_low=0.2, epsilon_high=0.28)
    assert out.tolist() == [[False, False, False, False, True], [True, False, False, False, False]]


def test_clipped_token_mask_per_token_advantages():
    coef = torch.tensor([[0.5, 0.5, 1.5, 1.5]])
    advantages = torch.tensor([[-1.0, 1.0, -1.0, 1.0]])
    out = clipped_token_mask(coef, advantages, epsilon_low=0.2, epsilon_high=0.28)
    assert out.tolist() == [[True, False, False, True]]


# ---------------------------------------------------------------------------------------------------------------
# Sec. 4 / Fig. 5 per-segment statistics
# ---------------------------------------------------------------------------------------------------------------


def test_segment_sums_and_means_hand_case():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 6.0, 7.0, 8.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    prefix_mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]])  # (0, 3) is a prefix flag on a masked token
    sums = segment_sums(values, mask, prefix_mask)
    assert sums.dtype == torch.float32 and sums.shape == (4,)
    # prefix: 1 + 2 + 5 = 8 over 3 tokens; continuation: 3 + 6 = 9 over 2 tokens; 100, 7, 8 are masked out.
    assert sums.tolist() == [8.0, 3.0, 9.0, 2.0]
    prefix, continuation = segment_means(sums)
    assert prefix == pytest.approx(8 / 3)
    assert continuation == pytest.approx(4.5)


def test_segment_sums_add_up_across_shards():
    # Sums (not means) so that an all-reduce before dividing gives the global mean.
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    prefix_mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
    total = segment_sums(values[:1], mask[:1], prefix_mask[:1]) + segment_sums(values[1:], mask[1:], prefix_mask[1:])
    assert total.tolist() == [5.0, 2.0, 5.0, 2.0]
    assert segment_means(total) == (2.5, 2.5)


def test_segment_means_empty_segment_is_nan():
    values = torch.tensor([[1.0, 2.0, 4.0]])
    mask = torch.tensor([[1, 1, 1]])
    sums = segment_sums(values, mask, torch.zeros(1, 3, dtype=torch.long))
    assert sums.tolist() == [0.0, 0.0, 7.0, 3.0]
    prefix, continuation = segment_means(sums)
    assert math.isnan(prefix)
    assert continuation == pytest.approx(7 / 3)
    prefix, continuation = segment_means(segment_sums(values, mask, torch.ones(1, 3, dtype=torch.long)))
    assert prefix == pytest.approx(7 / 3) and math.isnan(continuation)
    assert all(math.isnan(x) for x in segment_means(torch.zeros(4)))


# ---------------------------------------------------------------------------------------------------------------
# Eq. 1 with the Eq. 5 ratio: the DAPO token-level loss
# ---------------------------------------------------------------------------------------------------------------

EPS_LOW, EPS_HIGH = 0.2, 0.28


def _hand_batch():
    """The 2x3 worked example (float64).

    eps_low = 0.2, eps_high = 0.28, so clip(r) = clamp(r, 0.8, 1.28).

    Row 0: A = +1, mask [1, 1, 1], prefix [1, 0, 0]
      t0 prefix:       pi_theta 0.75, pi_behavior 0.5 (pi_old 0.9 is ignored) -> r = 1.5
                       min(1.5 * 1, 1.28 * 1) = 1.28                                  (clipped high)
      t1 continuation: pi_theta 0.55, pi_old 0.5 -> r = 1.1;  min(1.1, 1.1) = 1.1
      t2 continuation: pi_theta 0.4,  pi_old 0.8 -> r = 0.5;  min(0.5, 0.8) = 0.5    (A > 0: low side not clipped)
      row sum = 1.28 + 1.1 + 0.5 = 2.88
    Row 1: A = -2, mask [1, 1, 0], prefix [1, 1, 0]
      t0 prefix: pi_theta 0.35, pi_behavior 0.5 -> r = 0.7;  min(-1.4, 0.8 * -2 = -1.6) = -1.6  (clipped low)
      t1 prefix: pi_theta 0.6,  pi_behavior 0.4 -> r = 1.5;  min(-3.0, 1.28 * -2 = -2.56) = -3.0 (A < 0: not clipped)
      t2 masked: r = 10 would dominate if it leaked into the sum.
      row sum = -1.6 - 3.0 = -4.6
    J = (2.88 - 4.6) / sum|o_i| = -1.72 / 5 = -0.344, so the loss is -J = 0.344.
    """
    per_token_logps = torch.tensor(
        [[LOG(0.75), LOG(0.55), LOG(0.4)], [LOG(0.35), LOG(0.6), LOG(0.5)]], dtype=torch.float64
    )
    old = torch.tensor([[LOG(0.9), LOG(0.5), LOG(0.8)], [LOG(0.9), LOG(0.9), LOG(0.05)]], dtype=torch.float64)
    behavior = torch.tensor([[LOG(0.5), 0.0, 0.0], [LOG(0.5), LOG(0.4), 0.0]], dtype=torch.float64)
    prefix_mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
    advantages = torch.tensor([1.0, -2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return per_token_logps, old, behavior, prefix_mask, advantages, mask


def _loss(per_token_logps, old, behavior, prefix_mask, advantages, mask, **kwargs):
    return dapo_token_loss(per_token_logps, old, behavior, prefix_mask, advantages, mask, EPS_LOW, EPS_HIGH, **kwargs)


def test_dapo_token_loss_hand_example():
    batch = _hand_batch()
    assert _loss(*batch).item() == pytest.approx(0.344, abs=1e-12)
    # num_items (TRL's num_items_in_batch, e.g. tokens over all processes) replaces the local count: 1.72 / 8.
    assert _loss(*batch, num_items=8).item() == pytest.approx(0.215, abs=1e-12)
    assert _loss(*batch, num_items=torch.tensor(8.0)).item() == pytest.approx(0.215, abs=1e-12)
    # Advantages given as (B, 1) are the same as (B,).
    per_token_logps, old, behavior, prefix_mask, advantages, mask = batch
    same = _loss(per_token_logps, old, behavior, prefix_mask, advantages.unsqueeze(1), mask)
    assert same.item() == pytest.approx(0.344, abs=1e-12)


def test_dapo_token_loss_on_policy_limit():
    # No prefix, pi_theta == pi_old: r = 1 everywhere, loss = -(sum_i A_i |o_i|) / sum_i |o_i|.
    # A = [0.5, -1.5, 2.0], |o| = [3, 1, 2]: -(1.5 - 1.5 + 4.0) / 6 = -2/3.
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -9.0, -9.0], [-1.2, -0.7, -9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    advantages = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)
    behavior = torch.full_like(logps, -123.0)  # irrelevant without a prefix
    no_prefix = torch.zeros_like(mask)
    loss = dapo_token_loss(logps, logps.clone(), behavior, no_prefix, advantages, mask, EPS_LOW, EPS_HIGH)
    assert loss.item() == pytest.approx(-2 / 3, abs=1e-12)
    # Same value with a prefix when pi_theta == pi_behavior on it: r = 1 on every token again.
    prefix_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    old = logps + 0.7 * prefix_mask  # wrong on the prefix, but the prefix ratio must not use old
    behavior = torch.where(prefix_mask.bool(), logps, torch.zeros_like(logps))
    loss = dapo_token_loss(logps, old, behavior, prefix_mask, advantages, mask, EPS_LOW, EPS_HIGH)
    assert loss.item() == pytest.approx(-2 / 3, abs=1e-12)


def test_dapo_token_loss_gradient_is_zero_on_clipped_tokens():
    per_token_logps, old, behavior, prefix_mask, advantages, mask = _hand_batch()
    per_token_logps = per_token_logps.clone().requires_grad_(True)
    _loss(per_token_logps, old, behavior, prefix_mask, advantages, mask).backward()
    grad = per_token_logps.grad
    # d loss / d logp_t = -A r_t / 5 on unclipped tokens (d r / d logp = r), 0 on clipped and masked ones.
    assert grad[0, 0].item() == 0.0  # r = 1.5 > 1.28 with A > 0
    assert grad[1, 0].item() == 0.0  # r = 0.7 < 0.8 with A < 0
    assert grad[1, 2].item() == 0.0  # masked
    assert grad[0, 1].item() == pytest.approx(-1.1 / 5, abs=1e-12)
    assert grad[0, 2].item() == pytest.approx(-0.5 / 5, abs=1e-12)
    assert grad[1, 1].item() == pytest.approx(3.0 / 5, abs=1e-12)  # -(-2) * 1.5 / 5: r = 1.5 but A < 0


def test_dapo_token_loss_prefix_ratio_uses_behavior_not_old():
    batch = _hand_batch()
    per_token_logps, old, behavior, prefix_mask, advantages, mask = batch
    base = _loss(*batch).item()
    # Changing pi_old on a prefix position changes nothing.
    old_changed = old.clone()
    old_changed[0, 0] = LOG(0.01)
    old_changed[1, 1] = LOG(0.99)
    assert _loss(per_token_logps, old_changed, behavior, prefix_mask, advantages, mask).item() == base
    # Changing pi_behavior on a prefix position changes the loss: row 1, t1 with pi_behavior 0.6 -> r = 1,
    # surrogate -2 instead of -3.0, so J = (2.88 - 1.6 - 2.0) / 5 = -0.144.
    behavior_changed = behavior.clone()
    behavior_changed[1, 1] = LOG(0.6)
    changed = _loss(per_token_logps, old, behavior_changed, prefix_mask, advantages, mask).item()
    assert changed == pytest.approx(0.144, abs=1e-12)
    # Changing pi_behavior off the prefix changes nothing; changing pi_old on the continuation does:
    # row 0, t1 with pi_old 0.55 -> r = 1, surrogate 1 instead of 1.1, J = (2.78 - 4.6) / 5 = -0.364.
    behavior_off = behavior.clone()
    behavior_off[0, 1] = LOG(0.01)
    assert _loss(per_token_logps, old, behavior_off, prefix_mask, advantages, mask).item() == base
    old_cont = old.clone()
    old_cont[0, 1] = LOG(0.55)
    assert _loss(per_token_logps, old_cont, behavior, prefix_mask, advantages, mask).item() == pytest.approx(
        0.364, abs=1e-12
    )


def test_dapo_token_loss_normaliser_counts_prefix_tokens():
    # sum|o_i| counts prefix and continuation tokens alike: making every token a prefix token (with the same
    # ratios) leaves the normaliser at 5.
    per_token_logps, old, behavior, prefix_mask, advantages, mask = _hand_batch()
    all_prefix = torch.ones_like(prefix_mask)
    loss = _loss(per_token_logps, old, old, all_prefix, advantages, mask)  # behavior == old: the same ratios
    reference = _loss(per_token_logps, old, behavior, torch.zeros_like(prefix_mask), advantages, mask)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-12)
    # Both are -(sum of surrogates) / 5 with r_t = pi_theta / pi_old: row 0 t0 r = 0.75 / 0.9 = 0.8333 -> 0.8333,
    # t1 1.1, t2 0.5; row 1 t0 r = 0.35 / 0.9 = 0.3889 -> min(-0.7778, -1.6) = -1.6, t1 r = 0.6 / 0.9 -> -1.6.
    expected = -((0.75 / 0.9) + 1.1 + 0.5 - 1.6 - 1.6) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_entropy_truncation_nan_entropy_ranks_last():
    from trl_soup.core import truncate_by_entropy

    entropies = torch.tensor([[float("nan"), 0.5, 2.0, 1.0, 0.1]])
    mask = torch.ones_like(entropies, dtype=torch.long)
    cuts = {int(truncate_by_entropy(entropies, mask, 2, torch.Generator().manual_seed(s))) for s in range(200)}
    assert cuts == {2, 3}


def test_entropy_from_top_logprobs_exact_when_nothing_is_missing():
    from trl_soup.core import entropy_from_top_logprobs

    probs = torch.tensor([0.5, 0.25, 0.25])
    estimate, upper = entropy_from_top_logprobs(probs.log().unsqueeze(0), vocab_size=3)
    # H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2
    assert estimate.item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    assert upper.item() == pytest.approx(1.5 * math.log(2), abs=1e-6)


def test_entropy_from_top_logprobs_brackets_the_true_entropy():
    from trl_soup.core import entropy_from_top_logprobs

    # Hand case: V = 4, p = [0.4, 0.3, 0.2, 0.1]; top-2 known -> H_S = -(0.4 ln 0.4 + 0.3 ln 0.3), r = 0.3,
    # lower = H_S + 0.3 ln(1/0.3), upper = H_S + 0.3 ln(2 / 0.3).
    top = torch.tensor([[math.log(0.4), math.log(0.3)]])
    estimate, upper = entropy_from_top_logprobs(top, vocab_size=4)
    h_s = -(0.4 * math.log(0.4) + 0.3 * math.log(0.3))
    assert estimate.item() == pytest.approx(h_s + 0.3 * math.log(1 / 0.3), abs=1e-6)
    assert upper.item() == pytest.approx(h_s + 0.3 * math.log(2 / 0.3), abs=1e-6)
    true = -sum(p * math.log(p) for p in (0.4, 0.3, 0.2, 0.1))
    assert estimate.item() <= true <= upper.item()
    # Random distributions: the true entropy always lies in the bracket.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 50, generator=generator) * 3
    logp = torch.log_softmax(logits, -1)
    exact = -(logp.exp() * logp).sum(-1)
    top_k = torch.topk(logp, 5, dim=-1).values
    lower, upper = entropy_from_top_logprobs(top_k, vocab_size=50)
    assert torch.all(lower <= exact + 1e-6) and torch.all(exact <= upper + 1e-6)


def test_entropy_from_top_logprobs_ignores_missing_entries():
    from trl_soup.core import entropy_from_top_logprobs

    with_missing = torch.tensor([[math.log(0.5), math.log(0.5), float("-inf")]])
    estimate, _ = entropy_from_top_logprobs(with_missing, vocab_size=10)
    assert estimate.item() == pytest.approx(math.log(2), abs=1e-6)


def test_position_bin_sums_hand_case():
    from trl_soup.core import position_bin_sums

    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0], [10.0, 20.0, 30.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    # Bin of token t = floor((t + 1/2) * bins / L).  Row 0 (L = 4): t = 0, 1 -> 0.25, 0.75 -> bin 0; t = 2, 3 -> bin 1.
    # Row 1 (L = 3): t = 0 -> 1/3 -> bin 0; t = 1 -> 1.0 -> bin 1; t = 2 -> 5/3 -> bin 1.  Padding never counts.
    sums = position_bin_sums(values, mask, num_bins=2)
    assert sums.tolist() == [[1 + 2 + 10, 3], [3 + 4 + 20 + 30, 4]]
    # Ten bins, L = 3: centres at 1/6, 1/2, 5/6 of the response -> bins 1, 5 and 8.
    ten = position_bin_sums(values[1:], mask[1:], num_bins=10)
    assert ten[:, 1].tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 1, 0]
    assert ten[:, 0].tolist() == [0, 10, 0, 0, 0, 20, 0, 0, 30, 0]
    # A response of L > 5 tokens always has its first token in bin 0 and its last in bin 9.
    for length in (6, 9, 10, 37):
        counts = position_bin_sums(torch.ones(1, length), torch.ones(1, length), num_bins=10)[:, 1]
        assert counts[0] >= 1 and counts[9] >= 1 and counts.sum() == length


# ---------------------------------------------------------------------------------------------------------------
# Sec. 3.2 relay rule: final prefixes and continuation budgets
# ---------------------------------------------------------------------------------------------------------------


def test_continuation_budgets_hand_example():
    prefix = torch.tensor([3, 5, 5, 0, 8, 2])
    response = torch.tensor([6, 5, 5, 0, 9, 4])
    eos = torch.tensor([True, True, False, False, False, True])
    budgets, finished = continuation_budgets(prefix, response, eos, max_completion_length=8)
    # row 0: cut inside the response -> continues with 8 - 3; row 1: the whole response, ended with EOS -> final;
    # row 2: the whole response but truncated (no EOS) -> continues; row 3: empty prefix -> the whole budget;
    # row 4: prefix uses the whole budget -> final; row 5: cut before the EOS -> continues
    assert finished.tolist() == [False, True, False, False, True, False]
    assert budgets.tolist() == [5, 0, 3, 8, 0, 6]
