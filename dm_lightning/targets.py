"""Depth target representations (docs/method.md §2, paper Table III).

A target turns metric depth into the network's training signal in [-1, 1] and, for evaluation,
maps values in its (un-normalised) space back to depth. The network is trained on the
per-image quantile-normalised target, so at test time its output is only known up to scale
and shift *in the target's space*; evaluation fits that scale and shift
(:mod:`dm_lightning.evaluation.alignment`) and then calls :meth:`DepthTarget.inverse`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dm_lightning.errors import ConfigError

MIN_DISPARITY = 1e-3  # floor of aligned disparity at evaluation (docs/method.md §6)


class DepthTarget:
    """Base class: a monotone per-pixel map of depth plus 2%/98% quantile normalisation.

    Args:
        lower_quantile, upper_quantile: quantiles of the valid target values mapped to -1 and +1.
    """

    name = "base"
    #: Whether evaluation fits the per-image scale and shift only on pixels whose prediction is
    #: > 0 (on top of valid, finite GT > 0), to reproduce the released DepthMaster evaluation:
    #: its disparity-space fits drop pixels with prediction <= 0 (in practice the exact zeros,
    #: the clip floor of the [0, 1] output), its depth-space fit has no such term. Only the fit
    #: is affected: metrics are computed on all valid pixels either way.
    fit_needs_positive_prediction = False

    def __init__(self, lower_quantile: float = 0.02, upper_quantile: float = 0.98) -> None:
        if not 0.0 <= lower_quantile < upper_quantile <= 1.0:
            raise ValueError(
                f"need 0 <= lower_quantile < upper_quantile <= 1, got "
                f"{lower_quantile}, {upper_quantile}"
            )
        self.lower_quantile = lower_quantile
        self.upper_quantile = upper_quantile

    def forward(self, depth: Tensor) -> Tensor:
        """Un-normalised target of positive metric depth (same shape)."""
        raise NotImplementedError

    def inverse(self, value: Tensor) -> Tensor:
        """Depth (metres) from (aligned) un-normalised target values.

        Evaluation feeds least-squares-aligned predictions here, which can leave the valid
        range, so disparity-like targets clamp disparity at >= 1e-3 (docs/method.md §6) before
        inverting; callers clip the depth to the dataset range afterwards.
        """
        raise NotImplementedError

    def normalize(self, depth: Tensor, valid: Tensor) -> Tensor:
        """Per-image normalised target.

        Args:
            depth: (B, 1, H, W) metres.
            valid: (B, 1, H, W) bool, True where depth is a valid measurement.

        Returns:
            (B, 1, H, W) float in [-1, 1]: ``clip(2 (v - lo) / (hi - lo) - 1, -1, 1)`` with ``lo``,
            ``hi`` the quantiles of the valid values of each image; invalid pixels are -1.
        """
        b = depth.shape[0]
        safe = torch.where(valid, depth, torch.ones_like(depth))
        value = self.forward(safe)
        # All images at once, invalid pixels as NaN (nanquantile skips them): the same
        # numbers as a quantile of each image's valid values, with no per-image host sync.
        flat = torch.where(valid, value, torch.nan).reshape(b, -1).float()
        q = torch.tensor([self.lower_quantile, self.upper_quantile], device=depth.device)
        lo, hi = torch.nanquantile(flat, q, dim=1).view(2, b, 1, 1, 1)
        scale = torch.clamp(hi - lo, min=1e-6)
        norm = torch.clamp(2.0 * (value - lo) / scale - 1.0, -1.0, 1.0)
        # An image without a valid pixel has NaN quantiles; where() keeps its -1 everywhere.
        return torch.where(valid, norm, torch.full_like(norm, -1.0))


class SqrtDisparity(DepthTarget):
    """``sqrt(1 / depth)``: DepthMaster's default (best KITTI AbsRel in paper Table III)."""

    name = "sqrt_disparity"
    fit_needs_positive_prediction = True  # as the released evaluation

    def forward(self, depth: Tensor) -> Tensor:
        return torch.rsqrt(depth)

    def inverse(self, value: Tensor) -> Tensor:
        return 1.0 / value.square().clamp(min=MIN_DISPARITY)


class Disparity(DepthTarget):
    """``1 / depth`` (Lotus, E2E-FT style)."""

    name = "disparity"
    fit_needs_positive_prediction = True  # as the released evaluation

    def forward(self, depth: Tensor) -> Tensor:
        return 1.0 / depth

    def inverse(self, value: Tensor) -> Tensor:
        return 1.0 / value.clamp(min=MIN_DISPARITY)


class Depth(DepthTarget):
    """Plain depth (Marigold style); note 1 = far for this target."""

    name = "depth"

    def forward(self, depth: Tensor) -> Tensor:
        return depth

    def inverse(self, value: Tensor) -> Tensor:
        return value


TARGETS: dict[str, type[DepthTarget]] = {cls.name: cls for cls in (SqrtDisparity, Disparity, Depth)}

#: The spaces evaluation fits a prediction's per-image scale and shift in (docs/method.md §6):
#: the targets' own, since a prediction is known up to scale and shift in its target's space.
ALIGNMENT_SPACES = tuple(TARGETS)  # sqrt_disparity, disparity, depth

#: DepthMaster's target, so the space its predictions are read and aligned in unless a model
#: records another (the exported pipeline's own copy, ``DEFAULT_TARGET`` of
#: models/pipeline_depthmaster.py, cannot import this package; tests/test_recorded_target.py
#: pins them equal).
DEFAULT_SPACE = SqrtDisparity.name


def check_alignment_space(space: str, key: str | None = None) -> str:
    """``space``, if it is one of :data:`ALIGNMENT_SPACES`.

    Args:
        space: the alignment (fit) space asked for.
        key: the config key that set it (``model.init_args.eval_alignment``), named at the
            head of the message; None for a function's argument.

    Raises:
        ConfigError: another name: ``<key>: unknown space 'x'; expected one of
            sqrt_disparity, disparity, depth`` (without a key: ``unknown alignment space 'x';
            ...``).
    """
    if space not in ALIGNMENT_SPACES:
        what = f"{key}: unknown space" if key else "unknown alignment space"
        raise ConfigError(f"{what} {space!r}; expected one of {', '.join(ALIGNMENT_SPACES)}")
    return space


def get_target(name: str) -> DepthTarget:
    """Target by config name: ``sqrt_disparity``, ``disparity`` or ``depth``."""
    try:
        return TARGETS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown depth target {name!r}; expected one of {', '.join(sorted(TARGETS))}"
        ) from None
