"""Pretraining objectives, one function each, on a batch of model outputs and :class:`TargetTimes` rows.

- :func:`piecewise_exponential_nll` (MOTOR's time-to-event loss): each target has a constant hazard
  ``λ_b`` within each time bin ``(edge_b, edge_b+1]``; a row contributes, per target and bin, the
  expected number of events over the time it spent in the bin (``λ_b · exposure_b``) minus
  ``log λ_b`` in the bin where the event happened. A censored row is exposed up to its end of record
  and has no event term: it never counts as "did not happen" past its follow-up.
- :func:`multi_horizon_bce`: for each horizon (e.g. 30 / 180 / 365 days) a logit of "occurs within
  the horizon"; rows whose record ends before the horizon without the target are masked out.
Both average over rows and targets so their size does not depend on how many targets there are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def bin_exposure(days: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Time spent in each bin before ``days``: ``(..., n_bins)`` for ``edges`` = bins' lower edges (first 0)."""
    lower = torch.as_tensor(list(edges), dtype=days.dtype, device=days.device)
    upper = torch.cat([lower[1:], torch.tensor([float("inf")], dtype=days.dtype, device=days.device)])
    d = days.unsqueeze(-1)
    return (torch.minimum(d, upper) - lower).clamp(min=0.0)


def event_bin(days: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Index of the bin ``(lower, upper]`` each time falls in (``edges`` = lower edges, first 0).

    Bins are closed on the right so that an event has exposure in its own bin: time-bin edges are
    quantiles of observed event times, so an edge often equals an event time, and an event at the lower
    edge of a bin it spent no time in would let that bin's hazard grow without bound."""
    lower = torch.as_tensor(list(edges), dtype=days.dtype, device=days.device)
    return (torch.bucketize(days, lower, right=False) - 1).clamp(min=0)


def piecewise_exponential_nll(
    log_hazard: torch.Tensor, days: torch.Tensor, event: torch.Tensor, edges: Sequence[float]
) -> torch.Tensor:
    """Mean negative log-likelihood; ``log_hazard`` ``(rows, targets, bins)`` per day, ``days`` / ``event``
    ``(rows, targets)``."""
    exposure = bin_exposure(days, edges)
    expected = (torch.exp(log_hazard) * exposure).sum(-1)
    observed = torch.gather(log_hazard, -1, event_bin(days, edges).unsqueeze(-1)).squeeze(-1)
    return (expected - event.to(log_hazard.dtype) * observed).mean()


def multi_horizon_bce(
    logits: torch.Tensor, days: torch.Tensor, event: torch.Tensor, horizons: Sequence[float]
) -> torch.Tensor:
    """Mean BCE over known (row, target, horizon) cells; ``logits`` ``(rows, targets, horizons)``."""
    h = torch.as_tensor(list(horizons), dtype=days.dtype, device=days.device)
    d = days.unsqueeze(-1)
    label = event.unsqueeze(-1) & (d <= h)
    known = label | (d >= h)
    loss = F.binary_cross_entropy_with_logits(logits, label.to(logits.dtype), reduction="none")
    weight = known.to(logits.dtype)
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def cumulative_hazard(log_hazard: torch.Tensor, horizon_days: float, edges: Sequence[float]) -> torch.Tensor:
    """Λ(h): the expected number of occurrences within ``horizon_days`` under the piecewise-exponential hazards."""
    exposure = bin_exposure(torch.full(log_hazard.shape[:-1], float(horizon_days), dtype=log_hazard.dtype), edges)
    return (torch.exp(log_hazard) * exposure).sum(-1)


def occurrence_probability(log_hazard: torch.Tensor, horizon_days: float, edges: Sequence[float]) -> torch.Tensor:
    """P(the target occurs within ``horizon_days``) under the piecewise-exponential hazards: ``1 - exp(-Λ(h))``."""
    return 1.0 - torch.exp(-cumulative_hazard(log_hazard, horizon_days, edges))
