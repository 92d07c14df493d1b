"""Pure tensor math of SOUP (arXiv 2601.21476). Imports torch only.

Every function cites the paper's equation or section it implements. Shapes use B = batch (trajectories),
C = completion length (padded). A "prefix" is the part of a trajectory written by the behavior policy
(the frozen historical copy); the "continuation" is what the current policy wrote after it.

Equation map (see docs/equations.md):
    Sec. 3.3 ratio truncation      -> truncate_by_ratio
    Sec. 3.3 entropy truncation    -> truncate_by_entropy
    Eq. 4 trajectory o = [s_b, s_c] -> build_prefix_mask
    Eq. 5 mixed token ratio        -> mixed_old_per_token_logps
    Eq. 1 DAPO objective           -> dapo_token_loss (reference implementation used by tests and docs)
    Eq. 5, sequence level          -> sequence_log_importance_weights (reference implementation used by tests)
    Sec. 3.2 relay rule            -> continuation_budgets (training and relay inference)
    Eq. 5 with vLLM's correction   -> continuation_importance_sampling_ratio
    Fig. 5 / Sec. 4 statistics     -> clipped_token_mask, segment_sums, segment_means
    Sec. 3.3 entropy from a server -> entropy_from_top_logprobs (top-k estimate with a bound)
    Fig. 5 per-position statistics -> position_bin_sums
    Sec. 4.3 adaptive T (staleness) -> behavior_kl_estimate
"""

from __future__ import annotations

import torch

__all__ = [
    "behavior_kl_estimate",
    "build_prefix_mask",
    "clipped_token_mask",
    "continuation_budgets",
    "continuation_importance_sampling_ratio",
    "dapo_token_loss",
    "entropy_from_top_logprobs",
    "mixed_old_per_token_logps",
    "sequence_log_importance_weights",
    "position_bin_sums",
    "segment_means",
    "segment_sums",
    "truncate_by_entropy",
    "truncate_by_ratio",
]


def truncate_by_ratio(lengths: torch.Tensor, ratio: float) -> torch.Tensor:
    """Ratio truncation (paper Sec. 3.3): keep the first ``floor(len * ratio + 0.5)`` tokens.

    Args:
        lengths: ``(B,)`` integer lengths of the behavior responses (valid tokens, EOS included).
        ratio: fraction of each response kept as prefix, in ``[0, 1]``.

    Returns:
        ``(B,)`` long tensor of prefix lengths, each in ``[0, lengths[i]]``.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    lengths = torch.as_tensor(lengths)
    # k_i = floor(|s_i| * ratio + 1/2)   (round half up, in float64 so 0.5 boundaries are exact for short lengths)
    kept = torch.floor(lengths.to(torch.float64) * ratio + 0.5).to(torch.long)
    return torch.minimum(kept, lengths.to(torch.long))


def truncate_by_entropy(
    entropies: torch.Tensor,
    mask: torch.Tensor,
    top_k: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Entropy truncation (paper Sec. 3.3): cut just before a high-entropy token of the behavior response.

    Among the valid positions of each row (``mask == 1``), take the ``min(top_k, n_valid)`` positions of highest
    entropy, pick one uniformly at random with ``generator``, and return its index: the prefix is the tokens before
    that position, so the high-entropy token itself is re-sampled by the current policy. A row with no valid token
    gets prefix length 0.

    Args:
        entropies: ``(B, C)`` per-token entropy of the behavior policy at each response position.
        mask: ``(B, C)`` 1 on valid response tokens (right-padded: valid tokens form a prefix of the row).
        top_k: number of highest-entropy candidates (paper: 32).
        generator: source of randomness, for reproducibility (CPU generator).

    Returns:
        ``(B,)`` long tensor of prefix lengths, each in ``[0, n_valid_i - 1]`` (or 0 for an empty row).
    """
    _check_entropy_truncation_inputs(entropies, mask, top_k)
    valid = mask.bool()
    n_valid = valid.sum(dim=1).cpu()  # (B,)
    scores = _entropy_ranking_scores(entropies, valid)
    width = min(top_k, scores.size(1))
    if width == 0:
        return torch.zeros(entropies.size(0), dtype=torch.long, device=entropies.device)
    # Stable order: ties are broken by position, so the candidate set is deterministic.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :width]  # (B, width)
    pick = _uniform_candidate_index(torch.clamp(n_valid, max=top_k), generator)
    cut = order.gather(1, pick.unsqueeze(1)).squeeze(1)
    cut = torch.where(n_valid > 0, cut, torch.zeros_like(cut))
    return cut.to(entropies.device)


def _check_entropy_truncation_inputs(entropies: torch.Tensor, mask: torch.Tensor, top_k: int) -> None:
    """Argument checks of entropy truncation (paper Sec. 3.3): ``top_k >= 1``, two ``(B, C)`` tensors."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if entropies.shape != mask.shape or entropies.dim() != 2:
        raise ValueError(
            f"entropies and mask must both be (B, C); got {tuple(entropies.shape)} and {tuple(mask.shape)}"
        )


def _entropy_ranking_scores(entropies: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` float64 CPU scores that rank the entropy-truncation candidates (paper Sec. 3.3).

    Invalid positions can never be chosen: they are pushed below every valid entropy (``-inf``). A NaN entropy (a
    numerical fault upstream) must not jump the queue: it ranks last among valid positions.
    """
    scores = torch.nan_to_num(entropies.detach().to(torch.float64).cpu(), nan=-1e300)
    return scores.masked_fill(~valid.cpu(), float("-inf"))


def _uniform_candidate_index(counts: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The uniform pick of entropy truncation (paper Sec. 3.3): ``u_i ~ U{0, ..., k_i - 1}`` per row.

    One float64 uniform draw per row from ``generator``, scaled to that row's candidate count ``k_i = counts[i]``
    (CPU long, ``(B,)``); a row with no candidate gets 0.
    """
    u = torch.rand(counts.size(0), generator=generator, dtype=torch.float64)
    pick = torch.clamp((u * counts.to(torch.float64)).floor().to(torch.long), min=0)
    return torch.minimum(pick, torch.clamp(counts - 1, min=0))


def continuation_budgets(
    prefix_lengths: torch.Tensor,
    response_lengths: torch.Tensor,
    ended_with_eos: torch.Tensor,
    max_completion_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The relay rule (paper Sec. 3.2): what the current policy is asked to write after each behavior prefix.

    A prefix that is the whole behavior response and that response ended with EOS, or a prefix that leaves no budget,
    is final (no continuation); every other row continues with ``max_completion_length - len(prefix)`` tokens.

    Args:
        prefix_lengths: ``(B,)`` tokens kept from each behavior response.
        response_lengths: ``(B,)`` tokens of each full behavior response.
        ended_with_eos: ``(B,)`` whether the response ended with an EOS token.
        max_completion_length: the completion budget of the whole trajectory ``[s_b, s_c]``.

    Returns:
        ``(budgets, finished)``, both ``(B,)``: the continuation budget (0 where final) and the final-prefix mask.
    """
    remaining = max_completion_length - prefix_lengths  # |s_c| <= L - |s_b|
    finished = ((prefix_lengths == response_lengths) & ended_with_eos.bool()) | (remaining <= 0)
    return torch.where(finished, torch.zeros_like(remaining), remaining), finished


def build_prefix_mask(prefix_lengths: torch.Tensor, completion_length: int) -> torch.Tensor:
    """Trajectory layout o = [s_b, s_c] (paper Eq. 4): 1 on the first ``prefix_lengths[i]`` completion tokens.

    Args:
        prefix_lengths: ``(B,)`` number of behavior tokens at the start of each completion.
        completion_length: padded completion length C.

    Returns:
        ``(B, C)`` long tensor, 1 on prefix (behavior) tokens and 0 elsewhere.
    """
    positions = torch.arange(completion_length, device=prefix_lengths.device)
    return (positions.unsqueeze(0) < prefix_lengths.unsqueeze(1)).long()


def mixed_old_per_token_logps(
    prefix_mask: torch.Tensor,
    behavior_per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
) -> torch.Tensor:
    """Denominator of the SOUP token ratio (paper Eq. 5).

    r_t = pi_theta / pi_behavior on prefix tokens and pi_theta / pi_old on continuation tokens, so the log of the
    denominator is log pi_behavior where ``prefix_mask == 1`` and log pi_old elsewhere.

    Args:
        prefix_mask: ``(B, C)`` 1 on behavior tokens.
        behavior_per_token_logps: ``(B, C)`` log pi_behavior of each prefix token (ignored elsewhere).
        old_per_token_logps: ``(B, C)`` log pi_old of every completion token.

    Returns:
        ``(B, C)`` log-denominator of the per-token importance ratio.
    """
    # log d_t = 1[t in s_b] log pi_behavior(o_t) + 1[t in s_c] log pi_old(o_t)
    return torch.where(prefix_mask.bool(), behavior_per_token_logps, old_per_token_logps)


def continuation_importance_sampling_ratio(ratio: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
    """TRL's vLLM importance-sampling ratio restricted to the continuation: exactly 1 on prefix tokens.

    SOUP's prefix tokens are weighted by pi_theta / pi_behavior with the behavior's own sampling log-probs (paper
    Eq. 5), so no inference-mismatch correction applies to them; the continuation keeps TRL's ratio
    ``pi_old / pi_vLLM`` (token-level, or one value per sequence computed from the continuation only).

    Args:
        ratio: ``(B, C)`` token-level or ``(B, 1)`` sequence-level correction computed by TRL.
        prefix_mask: ``(B, C)``, 1 on prefix (behavior) tokens.

    Returns:
        ``(B, C)``: 1 on prefix tokens, ``ratio`` (broadcast) elsewhere.
    """
    return torch.where(prefix_mask.bool(), torch.ones_like(ratio), ratio)  # broadcasts (B, 1) to (B, C)


def sequence_log_importance_weights(
    per_token_logps: torch.Tensor, denominator: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Sequence-level importance weight with the mixed denominator of Eq. 5 (TRL's ``importance_sampling_level=
    "sequence"``, also behind ``luspo``; ``vespo`` reads the same token log-ratios).

    log s_i = 1/|o_i| sum_t (log pi_theta(o_t) - log d_t), with d_t = pi_behavior on prefix tokens and pi_old on
    continuation tokens: the geometric mean of the Eq. 5 token ratios, i.e. the length-normalised likelihood ratio of
    the trajectory under pi_theta against the two policies that actually wrote it
    (pi_behavior(s_b | q) * pi_old(s_c | q, s_b)).

    Args:
        per_token_logps: ``(B, C)`` log pi_theta.
        denominator: ``(B, C)`` output of :func:`mixed_old_per_token_logps`.
        mask: ``(B, C)`` 1 on tokens of the loss.

    Returns:
        ``(B, 1)`` log s_i (0 for a sequence without tokens).
    """
    mask = mask.float()
    # log s_i = sum_t m_t (log pi_theta - log d_t) / max(1, sum_t m_t)
    return ((per_token_logps - denominator) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)


def clipped_token_mask(
    coef: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> torch.Tensor:
    """Tokens where the clip of Eq. 1 is active (the clip ratio of paper Fig. 5).

    A token is clipped when ``r_t < 1 - eps_low`` with a negative advantage, or ``r_t > 1 + eps_high`` with a
    positive advantage (the only cases where the min in Eq. 1 picks the clipped term and the gradient vanishes).

    Args:
        coef: ``(B, C)`` importance ratio r_t.
        advantages: ``(B,)`` or ``(B, 1)`` or ``(B, C)`` advantages.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    low = (coef < 1 - epsilon_low) & (advantages < 0)
    high = (coef > 1 + epsilon_high) & (advantages > 0)
    return low | high


def segment_sums(values: torch.Tensor, mask: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
    """Sums and counts of a per-token statistic, split into prefix and continuation tokens (paper Sec. 4, Fig. 5).

    Returned as sums (not means) so that callers can all-reduce them across processes before dividing.

    Args:
        values: ``(B, C)`` per-token statistic (entropy, clip indicator, |log-ratio|, ...).
        mask: ``(B, C)`` 1 on tokens that count (completion and loss mask).
        prefix_mask: ``(B, C)`` 1 on behavior tokens.

    Returns:
        ``(4,)`` float tensor ``[prefix_sum, prefix_count, continuation_sum, continuation_count]``.
    """
    mask = mask.to(values.dtype)
    in_prefix = mask * prefix_mask.to(values.dtype)
    in_continuation = mask - in_prefix
    return torch.stack(
        [(values * in_prefix).sum(), in_prefix.sum(), (values * in_continuation).sum(), in_continuation.sum()]
    ).to(torch.float32)


def segment_means(sums: torch.Tensor) -> tuple[float, float]:
    """Means from :func:`segment_sums` (possibly all-reduced). A segment with no token gives NaN."""
    prefix_sum, prefix_count, continuation_sum, continuation_count = sums.tolist()
    prefix = prefix_sum / prefix_count if prefix_count > 0 else float("nan")
    continuation = continuation_sum / continuation_count if continuation_count > 0 else float("nan")
    return prefix, continuation


def dapo_token_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    behavior_per_token_logps: torch.Tensor,
    prefix_mask: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """SOUP's DAPO objective (paper Eq. 1 with the token ratio of Eq. 5), as a loss to minimise.

    L = -1 / sum_i |o_i| * sum_i sum_t min(r_t A_i, clip(r_t, 1 - eps_low, 1 + eps_high) A_i)

    This is the reference implementation: the trainer reaches the same value through TRL's loss with the mixed
    denominator, and the tests check that they agree.

    Args:
        per_token_logps: ``(B, C)`` log pi_theta.
        old_per_token_logps: ``(B, C)`` log pi_old.
        behavior_per_token_logps: ``(B, C)`` log pi_behavior on prefix tokens.
        prefix_mask: ``(B, C)`` 1 on behavior tokens.
        advantages: ``(B,)`` group-relative advantages.
        mask: ``(B, C)`` 1 on completion tokens that count.
        num_items: the normaliser sum_i |o_i|; defaults to ``mask.sum()``.
    """
    denominator = mixed_old_per_token_logps(prefix_mask, behavior_per_token_logps, old_per_token_logps)
    ratio = torch.exp(per_token_logps - denominator)  # r_t, Eq. 5
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv)  # Eq. 1
    normaliser = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token_logps.dtype)
    return -(surrogate * mask).sum() / normaliser.clamp(min=1.0)


def entropy_from_top_logprobs(top_logprobs: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of a next-token distribution known only through its top-k log-probs (for Sec. 3.3 on a server).

    With S the k most likely tokens, p_min the smallest probability in S and r = 1 - sum_S p the mass outside S,
    every token outside S has probability <= p_min, so the exact entropy H satisfies

        H_S + r log(1 / p_min)  <=  H  <=  H_S + r log((V - k) / r),     H_S = -sum_S p log p.

    The lower end is returned as the estimate (it is exact when the tail is made of tokens as likely as p_min, and
    when r = 0); the gap to the upper end bounds its error.

    Args:
        top_logprobs: ``(..., k)`` log-probs of the k most likely tokens; missing entries are ``-inf``.
        vocab_size: V, the size of the vocabulary.

    Returns:
        ``(estimate, upper_bound)``, each of shape ``(...)``.
    """
    logp = top_logprobs.to(torch.float64)
    p = logp.exp()
    known = torch.isfinite(logp)
    h_top = -(torch.where(known, p * logp, torch.zeros_like(p))).sum(-1)  # H_S
    rest = (1.0 - p.sum(-1)).clamp(min=0.0)  # r
    k = known.sum(-1)
    log_p_min = torch.where(known, logp, torch.full_like(logp, float("inf"))).min(-1).values
    lower = h_top + rest * (-log_p_min).clamp(min=0.0)  # H_S + r log(1/p_min)
    tail = torch.clamp(vocab_size - k, min=1).to(torch.float64)
    upper = h_top + torch.where(
        rest > 0, rest * (torch.log(tail) - torch.log(rest.clamp(min=1e-300))), torch.zeros_like(rest)
    )
    upper = torch.maximum(upper, lower)
    return lower.to(top_logprobs.dtype), upper.to(top_logprobs.dtype)


def position_bin_sums(values: torch.Tensor, mask: torch.Tensor, num_bins: int = 10) -> torch.Tensor:
    """Sums and counts of a per-token statistic by relative position in the response (paper Fig. 5).

    Token t (0-based) of a response with L valid tokens covers the relative span [t / L, (t + 1) / L); it falls in
    the bin of its centre, ``floor((t + 1/2) * num_bins / L)``: with 10 bins, bin 0 holds the first 10% of each
    response and bin 9 the last 10%. (With the span's start instead, the last token of every response shorter than
    ``num_bins`` tokens would miss the last bin.)

    Args:
        values: ``(B, C)`` per-token statistic (entropy, clip indicator, ...).
        mask: ``(B, C)`` 1 on valid tokens (right-padded: the valid tokens form a prefix of each row).
        num_bins: number of equal-width bins of relative position.

    Returns:
        ``(num_bins, 2)`` float tensor of ``[sum, count]`` per bin, to all-reduce before dividing.
    """
    mask = mask.to(values.dtype)
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)  # L_i
    positions = torch.arange(values.size(1), device=values.device, dtype=values.dtype).unsqueeze(0)
    bins = torch.floor((positions + 0.5) * num_bins / lengths).clamp(max=num_bins - 1).long()  # floor((t+1/2) bins/L)
    one_hot = torch.nn.functional.one_hot(bins, num_bins).to(values.dtype) * mask.unsqueeze(-1)  # (B, C, bins)
    sums = (one_hot * values.unsqueeze(-1)).sum(dim=(0, 1))
    counts = one_hot.sum(dim=(0, 1))
    return torch.stack([sums, counts], dim=1).to(torch.float32)


def behavior_kl_estimate(log_ratio: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi_behavior || pi_theta) on tokens sampled by the behavior policy (the staleness of
    the behavior copy; paper Sec. 4.3 asks for an automatic choice of T).

    With ``log r_t = log pi_theta(o_t) - log pi_behavior(o_t)`` and ``o_t ~ pi_behavior``, the estimator
    ``k3 = (r_t - 1) - log r_t`` has expectation ``E_b[r - 1] - E_b[log r] = 0 + KL(pi_behavior || pi_theta)``: it is
    unbiased, and non-negative for every token (``x - 1 >= log x``), unlike ``-log r_t``.

    Args:
        log_ratio: ``(B, C)`` log-ratios on behavior (prefix) tokens; other positions are masked by the caller.

    Returns:
        ``(B, C)`` non-negative per-token estimates (their mean over prefix tokens estimates the KL per token).
    """
    return torch.expm1(log_ratio) - log_ratio
