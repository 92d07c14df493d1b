"""SOUP's ``soup/`` metrics as functions of tensors (paper Sec. 4, Fig. 5).

Each ``*_sums`` function returns named sums and counts, so that the trainer can all-reduce them across processes
before dividing; the matching ``*_metrics`` function turns the reduced sums into metric values by name. Empty
segments or bins give NaN. To add a metric: a ``*_sums`` / ``*_metrics`` pair here, one call in the trainer hook
that has the tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .core import behavior_kl_estimate, clipped_token_mask, position_bin_sums, segment_means, segment_sums

POSITION_BINS = 10  # paper Fig. 5: 10% bins of relative token position

__all__ = [
    "POSITION_BINS",
    "composition_metrics",
    "composition_sums",
    "continuation_ratio_summary",
    "importance_sampling_metrics",
    "loss_statistics_metrics",
    "loss_statistics_sums",
    "prefix_group_metrics",
    "prefix_group_names",
    "prefix_group_sums",
    "position_metrics",
    "prefix_staleness_sums",
    "position_sums",
    "reduce_sums",
    "relay_length_metrics",
    "segment_metrics",
    "segment_statistic_values",
    "segment_statistics_sums",
    "select_sums",
]


def composition_sums(prefix_mask: torch.Tensor, loss_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token counts of the batch by segment: ``{"tokens": [prefix_sum, prefix_count, cont_sum, cont_count]}``."""
    return {"tokens": segment_sums(torch.ones_like(prefix_mask, dtype=torch.float32), loss_mask, prefix_mask)}


def composition_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    tokens = sums["tokens"]
    return {"soup/prefix_fraction": (tokens[1] / (tokens[1] + tokens[3]).clamp(min=1.0)).item()}


def relay_length_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """From :meth:`trl_soup.records.RelayRecord.length_sums` (reduced): mean lengths and the final-prefix share."""
    stats = sums["lengths"]
    return {
        "soup/prefix_length/mean": (stats[0] / stats[3]).item(),
        "soup/behavior_length/mean": (stats[1] / stats[3]).item(),
        "soup/no_continuation_fraction": (stats[2] / stats[3]).item(),
    }


def segment_statistic_values(
    per_token_logps: torch.Tensor,
    denominator: torch.Tensor | None,
    advantages: torch.Tensor,
    entropies: torch.Tensor | None,
    epsilon_low: float,
    epsilon_high: float,
) -> dict[str, torch.Tensor]:
    """Per-token statistics of the loss (paper Fig. 5): clip indicator of Eq. 1, |log r_t|, and entropy if known.

    Args:
        per_token_logps: ``(B, C)`` log pi_theta of the loss forward.
        denominator: ``(B, C)`` the ratio's denominator (Eq. 5), or None when TRL uses pi_theta itself (ratio 1).
        advantages: ``(B,)`` or ``(B, 1)`` advantages.
        entropies: ``(B, C)`` or None.
    """
    log_ratio = per_token_logps - (per_token_logps if denominator is None else denominator)
    values = {
        "clip_ratio": clipped_token_mask(torch.exp(log_ratio), advantages, epsilon_low, epsilon_high).float(),
        "log_ratio": log_ratio.abs(),
        "kl": behavior_kl_estimate(log_ratio),  # KL(sampler || pi_theta) estimate: the prefix's is the staleness
    }
    if entropies is not None:
        values["entropy"] = entropies
    return values


def segment_statistics_sums(
    values: dict[str, torch.Tensor], mask: torch.Tensor, prefix_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """:func:`trl_soup.core.segment_sums` of each statistic."""
    return {name: segment_sums(v, mask, prefix_mask) for name, v in values.items()}


def segment_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """``soup/<name>/prefix`` and ``.../continuation`` means (``soup/log_ratio/*_abs_mean`` for |log r_t|)."""
    metrics = {}
    for name, row in sums.items():
        prefix, continuation = segment_means(row)
        if name == "log_ratio":
            metrics["soup/log_ratio/prefix_abs_mean"] = prefix
            metrics["soup/log_ratio/continuation_abs_mean"] = continuation
        else:
            metrics[f"soup/{name}/prefix"] = prefix
            metrics[f"soup/{name}/continuation"] = continuation
    return metrics


def prefix_staleness_sums(sums: dict[str, torch.Tensor]) -> tuple[float, float, float, float]:
    """From reduced :func:`segment_statistics_sums`: prefix tokens, and the prefix sums of the KL estimate, of
    |log r| and of clipped tokens (:meth:`trl_soup.refresh.RefreshSchedule.add`)."""
    return (
        float(sums["kl"][1]),
        float(sums["kl"][0]),
        float(sums["log_ratio"][0]),
        float(sums["clip_ratio"][0]),
    )


def prefix_group_names(pool_size: int, sources: list[str]) -> dict[str, list[str]]:
    """The batch keys that name each relay row's writer, with the metric names of their groups: the pool member's age
    rank with a pool (``behavior_pool_size`` > 1), the prefix source with several sources."""
    groups = {}
    if pool_size > 1:
        groups["behavior_member_age"] = [f"soup/pool/age_{k}" for k in range(pool_size)]
    if len(sources) > 1:
        groups["prefix_source_id"] = [f"soup/source/{name}" for name in sources]
    return groups


def prefix_group_sums(
    values: dict[str, torch.Tensor],
    mask: torch.Tensor,
    prefix_mask: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
) -> torch.Tensor:
    """Prefix statistics by row group (the pool member's age rank, the prefix source): a ``(num_groups, 3)`` table of
    prefix tokens, clipped prefix tokens and their |log r| sum per group. Rows of group -1 (on-policy batches) count
    nowhere."""
    prefix = (mask * prefix_mask).float()
    rows = torch.stack(
        [prefix.sum(dim=1), (values["clip_ratio"] * prefix).sum(dim=1), (values["log_ratio"] * prefix).sum(dim=1)],
        dim=1,
    )  # (B, 3)
    onehot = groups.to(rows.device).long().unsqueeze(1) == torch.arange(num_groups, device=rows.device).unsqueeze(0)
    return onehot.float().T @ rows


def prefix_group_metrics(table: torch.Tensor, names: list[str]) -> dict[str, float]:
    """``<name>/{prefix_share,clip_ratio,log_ratio_abs_mean}`` for each row of a reduced :func:`prefix_group_sums`
    table: the share of all prefix tokens the group wrote, the clip ratio and the mean |log r| on them (NaN when it
    wrote none)."""
    total = float(table[:, 0].sum())
    metrics = {}
    for name, (tokens, clipped, log_ratio) in zip(names, table.tolist(), strict=True):
        metrics[f"{name}/prefix_share"] = tokens / total if total > 0 else float("nan")
        metrics[f"{name}/clip_ratio"] = clipped / tokens if tokens > 0 else float("nan")
        metrics[f"{name}/log_ratio_abs_mean"] = log_ratio / tokens if tokens > 0 else float("nan")
    return metrics


def position_sums(
    values: dict[str, torch.Tensor], mask: torch.Tensor, num_bins: int = POSITION_BINS
) -> dict[str, torch.Tensor]:
    """Entropy and clip ratio (those present) by bin of relative position: ``(num_bins, 2)`` sums and counts."""
    return {
        name: position_bin_sums(values[name], mask, num_bins) for name in ("entropy", "clip_ratio") if name in values
    }


def position_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """``soup/position/<name>/bin_<i>``: the mean in bin i (NaN for an empty bin)."""
    metrics = {}
    for name, rows in sums.items():
        for i, (total, count) in enumerate(rows.tolist()):
            metrics[f"soup/position/{name}/bin_{i}"] = total / count if count > 0 else float("nan")
    return metrics


def continuation_ratio_summary(
    ratio: torch.Tensor, completion_mask: torch.Tensor, prefix_mask: torch.Tensor
) -> torch.Tensor:
    """``(3,)`` min, mean and max of TRL's vLLM importance-sampling ratio over the continuation.

    Token modes (``ratio`` is ``(B, C)``): over continuation tokens; sequence modes (``(B, 1)``): over the sequences
    that have a continuation. NaN when there is none (a rank without continuation tokens; the gather skips NaN).
    """
    continuation = completion_mask.bool() & ~prefix_mask.bool()
    values = ratio[continuation.any(dim=1)].flatten() if ratio.size(1) == 1 else ratio[continuation]
    if values.numel() == 0:
        return torch.full((3,), float("nan"), device=ratio.device)
    return torch.stack([values.min(), values.mean(), values.max()])


def importance_sampling_metrics(gathered: torch.Tensor) -> dict[str, float]:
    """``sampling/importance_sampling_ratio/{min,mean,max}`` from the ``(num_processes, 3)`` gathered summaries."""
    metrics = {}
    for column, (name, reduce) in enumerate((("min", torch.min), ("mean", torch.mean), ("max", torch.max))):
        finite = gathered[:, column][~gathered[:, column].isnan()]
        metrics[f"sampling/importance_sampling_ratio/{name}"] = (
            reduce(finite).item() if finite.numel() else float("nan")
        )
    return metrics


def loss_statistics_sums(
    values: dict[str, torch.Tensor],
    mask: torch.Tensor,
    prefix_mask: torch.Tensor,
    groups: dict[str, tuple[torch.Tensor, int]],
    log_positions: bool,
) -> dict[str, torch.Tensor]:
    """Every sum one loss batch contributes, under prefixed names to all-reduce in one collective: ``segment/``
    (:func:`segment_statistics_sums`), ``position/`` (:func:`position_sums`, with ``log_positions``) and
    ``group/<key>`` (:func:`prefix_group_sums` of each ``key -> (row groups, number of groups)``)."""
    sums = {f"segment/{name}": value for name, value in segment_statistics_sums(values, mask, prefix_mask).items()}
    if log_positions:
        sums |= {f"position/{name}": value for name, value in position_sums(values, mask).items()}
    for key, (row_groups, count) in groups.items():
        sums[f"group/{key}"] = prefix_group_sums(values, mask, prefix_mask, row_groups, count)
    return sums


def loss_statistics_metrics(sums: dict[str, torch.Tensor], group_names: dict[str, list[str]]) -> dict[str, float]:
    """The metrics of reduced :func:`loss_statistics_sums`: by segment, by position, and by row group (the metric
    names of each group key)."""
    metrics = segment_metrics(select_sums(sums, "segment/")) | position_metrics(select_sums(sums, "position/"))
    for key, names in group_names.items():
        metrics |= prefix_group_metrics(sums[f"group/{key}"], names)
    return metrics


def select_sums(sums: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``sums`` under ``prefix``, with the prefix removed."""
    return {name[len(prefix) :]: value for name, value in sums.items() if name.startswith(prefix)}


def reduce_sums(sums: dict[str, torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Named sums summed over processes in one collective: ``reduce`` (a sum over ranks) gets them flattened into one
    tensor, in the order of ``sums`` (every rank must pass the same names in the same order)."""
    names = list(sums)
    flat = reduce(torch.cat([sums[name].flatten() for name in names]))
    chunks = flat.split([sums[name].numel() for name in names])
    return {name: chunk.view_as(sums[name]) for name, chunk in zip(names, chunks, strict=True)}
