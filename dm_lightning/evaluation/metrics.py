"""The evaluation protocol's torchmetrics classes (docs/method.md §6).

:class:`DepthMetrics` keeps the sums of the eight metrics of
:func:`~dm_lightning.evaluation.scoring.evaluate_batch` and an image count with
``dist_reduce_fx="sum"``, so N ranks give the one-process result; :class:`AbsRel` to
:class:`Delta3` each return one of its values.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from dm_lightning.evaluation.scoring import METRIC_NAMES, evaluate_batch
from dm_lightning.targets import DEFAULT_SPACE, check_alignment_space


def _sum_where(values: Tensor, keep: Tensor) -> Tensor:
    """Sum of the (B,) ``values`` where the (B,) bool ``keep`` is True, as a 0-d tensor.

    On the CPU by boolean indexing, which costs no sync there and keeps the sums bit-identical
    to earlier releases (torch's vectorised sum groups terms by position, so zeros in place of
    the left-out images would change the last bits); elsewhere with ``torch.where``, since
    boolean indexing makes the host wait for the device to learn the output size.
    """
    if values.device.type == "cpu":
        return values[keep].sum()
    return torch.where(keep, values, 0.0).sum()


class DepthMetrics(Metric):
    """Mean over images of the 8 standard depth metrics after per-image alignment.

    ``update(pred, gt, valid, min_depth, max_depth)`` scores a batch; ``update_values(values,
    has_valid)`` adds :func:`evaluate_batch`'s output (for callers that also keep the per-image
    values and must not compute them twice). ``compute()`` returns name -> scalar (fractions,
    not x100) plus ``num_images`` and ``skipped_images`` (no valid pixel; skipped, never NaN).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, space: str = DEFAULT_SPACE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.space = check_alignment_space(space)
        for name in METRIC_NAMES:
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped_images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # Wrapped as torchmetrics wraps update (update count, cached compute() cleared).
        self.update_values = self._wrap_update(self.update_values)

    def update(
        self,
        pred: Tensor,
        gt: Tensor,
        valid: Tensor,
        min_depth: Tensor | float,
        max_depth: Tensor | float,
    ) -> None:
        """Score a batch and add it (arguments as :func:`evaluate_batch`)."""
        self._add(*evaluate_batch(pred, gt, valid, min_depth, max_depth, self.space))

    def update_values(self, values: dict[str, Tensor], has_valid: Tensor) -> None:
        """Add a batch already scored by :func:`evaluate_batch` (its two outputs)."""
        self._add(values, has_valid)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("update_values", None)  # a closure; re-wrapped on load
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.update_values = self._wrap_update(self.update_values)

    def _add(self, values: dict[str, Tensor], has_valid: Tensor) -> None:
        for name in METRIC_NAMES:
            setattr(self, name, getattr(self, name) + _sum_where(values[name], has_valid))
        self.num_images += has_valid.sum()
        self.skipped_images += (~has_valid).sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.num_images.clamp(min=1).double()
        out = {name: getattr(self, name) / n for name in METRIC_NAMES}
        out["num_images"] = self.num_images
        out["skipped_images"] = self.skipped_images
        return out


class _OneDepthMetric(DepthMetrics):
    """One of :class:`DepthMetrics`' values; use DepthMetrics itself for several (one
    alignment per image serves all eight)."""

    metric_name = ""

    def compute(self) -> Tensor:
        return super().compute()[self.metric_name]


# metric name -> what its class averages over images (the classes' docstrings)
_MEANS = {
    "abs_rel": "``mean(|d - g| / g)``",
    "sq_rel": "``mean((d - g)^2 / g)``",
    "rmse": "``sqrt(mean((d - g)^2))``, metres",
    "rmse_log": "``sqrt(mean((ln d - ln g)^2))``",
    "log10": "``mean(|log10 d - log10 g|)``",
    "delta1": "the fraction with ``max(d/g, g/d) < 1.25``",
    "delta2": "the fraction with ``max(d/g, g/d) < 1.25^2``",
    "delta3": "the fraction with ``max(d/g, g/d) < 1.25^3``",
}


def _one_metric(class_name: str, metric_name: str) -> type[_OneDepthMetric]:
    """The :class:`DepthMetrics` class named ``class_name`` whose ``compute()`` returns
    ``metric_name`` alone (a module-level class: importable and picklable by its name)."""
    return type(
        class_name,
        (_OneDepthMetric,),
        {
            "__doc__": f"Mean over images of {_MEANS[metric_name]}.",
            "__module__": __name__,
            "__qualname__": class_name,
            "metric_name": metric_name,
        },
    )


AbsRel = _one_metric("AbsRel", "abs_rel")
SqRel = _one_metric("SqRel", "sq_rel")
RMSE = _one_metric("RMSE", "rmse")
RMSELog = _one_metric("RMSELog", "rmse_log")
Log10 = _one_metric("Log10", "log10")
Delta1 = _one_metric("Delta1", "delta1")
Delta2 = _one_metric("Delta2", "delta2")
Delta3 = _one_metric("Delta3", "delta3")
