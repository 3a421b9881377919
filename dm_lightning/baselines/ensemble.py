"""Marigold's test-time ensembling of affine-invariant depth maps (docs/method.md §8.3).

Each ensemble member is one denoising run from its own initial noise. Members are known only up
to a scale and shift each, so they are aligned to each other by a per-member affine map before
their per-pixel median is taken, and the result is normalised to [0, 1].

Marigold's ``ensemble_depth`` (its repository and diffusers') finds the maps with scipy's BFGS
on the summed pairwise RMSE of the aligned members plus a term pulling their median to [0, 1].
scipy is not a dependency here, and a search over a non-smooth cost is neither exact nor
deterministic across machines, so the alignment below is a closed-form fixed-point iteration
with the same criterion (members that agree after per-member affine maps) and the same start:

1. each member min-max normalised to [0, 1] (BFGS's initial parameters in Marigold);
2. ``ALIGNMENT_PASSES`` times: each member least-squares fitted (scale and shift) to the
   per-pixel median of the aligned members;
3. the median of the aligned members, min-max normalised to [0, 1] (as Marigold's output).

Members that are exact affine maps (positive scale) of one map ``d`` are aligned exactly in
step 1 and stay so, and the ensemble is ``(d - min d) / (max d - min d)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dm_lightning.errors import ConfigError

ALIGNMENT_PASSES = 5
# Floor of a range / variance (Marigold's clamp of the range): a constant member stays finite.
EPS = 1e-6


def min_max_normalize(x: Tensor) -> Tensor:
    """``(x - min) / max(max - min, EPS)`` over the last two dims (per map)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=EPS)


def lower_median(members: Tensor) -> Tensor:
    """Per-pixel median over dim 1 (the members); for an even count the lower of the two middle
    values (``torch.median``, as Marigold), not their mean."""
    return members.median(dim=1).values


def fit_to(members: Tensor, reference: Tensor) -> Tensor:
    """Each member's least-squares affine map onto ``reference``, applied.

    Args:
        members: (B, E, H, W).
        reference: (B, H, W).

    Returns:
        (B, E, H, W) ``s * m + t`` with ``s = cov(m, ref) / var(m)``, ``t = mean(ref) -
        s * mean(m)`` per member (a constant member maps to the mean of ``reference``).
    """
    ref = reference.unsqueeze(1)
    m_mean = members.mean(dim=(-2, -1), keepdim=True)
    r_mean = ref.mean(dim=(-2, -1), keepdim=True)
    dm = members - m_mean
    cov = (dm * (ref - r_mean)).mean(dim=(-2, -1), keepdim=True)
    var = dm.square().mean(dim=(-2, -1), keepdim=True)
    scale = torch.where(var > EPS**2, cov / var.clamp(min=EPS**2), torch.zeros_like(var))
    return scale * dm + r_mean


def ensemble_depth(members: Tensor, passes: int = ALIGNMENT_PASSES) -> Tensor:
    """Align and reduce ensemble members of affine-invariant depth.

    Args:
        members: (B, E, H, W) predictions, E members per image (any range; Marigold's are in
            [0, 1]).
        passes: least-squares alignment passes after the min-max start (0: min-max only).

    Returns:
        (B, 1, H, W) float32 in [0, 1]: the per-pixel (lower) median of the aligned members,
        min-max normalised. Computed in float64.

    Raises:
        ConfigError: ``members`` is not 4-D or ``passes`` < 0.
    """
    if members.ndim != 4:
        raise ConfigError(
            f"ensemble_depth: expected members of shape (B, E, H, W), got {tuple(members.shape)}"
        )
    if passes < 0:
        raise ConfigError(f"ensemble_depth: passes must be >= 0, got {passes}")
    aligned = min_max_normalize(members.double())
    for _ in range(passes):
        aligned = fit_to(aligned, lower_median(aligned))
    return min_max_normalize(lower_median(aligned)).unsqueeze(1).float()
