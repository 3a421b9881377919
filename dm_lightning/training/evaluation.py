"""Evaluation bookkeeping of a task: per-split metrics, skip counters and per-image rows.

:class:`EvaluationBook` holds, for every validation and test split, a
:class:`~dm_lightning.metrics.DepthMetrics` and a count of the samples the data streams
skipped (both synchronised over ranks with ``dist_reduce_fx="sum"``), and for test splits the
per-image metric rows, gathered over ranks at the end of the epoch. The LightningModule runs
the network and hands the book its predictions; the book scores, logs and reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import SumMetric

from dm_lightning.errors import DataError
from dm_lightning.metrics import METRIC_NAMES, DepthMetrics, evaluate_batch

# The values logged per split as <stage>/<split>/<name>; the first split's abs_rel and delta1
# are also logged as <stage>/<name> (val/abs_rel drives checkpoint selection).
LOGGED_VALUES = (*METRIC_NAMES, "num_images", "skipped_images", "skipped_samples")
HEADLINE_VALUES = ("abs_rel", "delta1")


def split_key(stage: str, name: str) -> str:
    """Module key of split ``name`` of ``stage`` ("val" or "test"); ModuleDict keys may not
    contain dots."""
    return f"{stage}__{name}".replace(".", "_")


class EvaluationBook(nn.Module):
    """Metric state of the validation and test splits.

    Args:
        space: alignment space of the per-image scale/shift fit (see
            :func:`~dm_lightning.metrics.align_prediction`).

    ``per_image_results`` maps a test split name to its per-image rows of all ranks
    (``{"key": str, <metric>: float, ...}``, sorted by key; images without a valid pixel left
    out, as in the logged means), filled by :meth:`compute_and_log` of the test stage.
    """

    def __init__(self, space: str) -> None:
        super().__init__()
        self.space = space
        self.metrics = nn.ModuleDict()
        # Corrupt samples the data streams skipped, synchronised like the metrics.
        self.skipped = nn.ModuleDict()
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self.per_image_results: dict[str, list[dict[str, Any]]] = {}

    def build(self, splits: dict[str, Iterable[str]], device: torch.device) -> None:
        """Fresh state for ``splits`` (stage -> split names), on ``device``. Called in each
        (possibly spawned) process, so the state is never shared across ranks."""
        keys = [split_key(stage, name) for stage, names in splits.items() for name in names]
        self.metrics = nn.ModuleDict({k: DepthMetrics(space=self.space) for k in keys}).to(device)
        self.skipped = nn.ModuleDict({k: SumMetric() for k in keys}).to(device)
        self._rows = {k: [] for k in keys}

    def update(self, stage: str, name: str, batch: dict[str, Any], pred: Tensor | None) -> None:
        """Add an eval batch of split ``name``: its ``skipped`` count, and (``pred`` not None:
        the network's (B, 1, H, W) relative depth) its scores, plus per-image rows for test."""
        key = split_key(stage, name)
        self.skipped[key].update(float(batch.get("skipped", 0)))
        if pred is None:
            return
        gt_args = (batch["depth"], batch["valid"], batch["min_depth"], batch["max_depth"])
        values, has_valid = evaluate_batch(pred, *gt_args, space=self.space)
        self.metrics[key].update_values(values, has_valid)
        if stage == "test":
            # Images without a valid pixel are left out, as in the logged means.
            for i in has_valid.nonzero()[:, 0].tolist():
                row = {metric: float(values[metric][i]) for metric in METRIC_NAMES}
                self._rows[key].append({"key": batch["key"][i], **row})

    def compute_and_log(self, stage: str, names: list[str], log: Callable[..., None]) -> None:
        """Compute, log (through the LightningModule's ``log``) and reset every split of
        ``stage``; for test also gather the per-image rows into :attr:`per_image_results`.

        Raises:
            DataError: a split evaluated no image (every rank raises together: ``compute``
                synchronised the counts). A mean over no image would be logged as 0.0: better
                no number than a wrong one.
        """
        for i, name in enumerate(names):
            key = split_key(stage, name)
            if key not in self.metrics:
                continue
            values = self.metrics[key].compute()
            values["skipped_samples"] = self.skipped[key].compute()
            self.skipped[key].reset()
            if int(values["num_images"]) == 0:
                raise DataError(
                    f"{stage} split {name!r}: no image was evaluated "
                    f"({int(values['skipped_samples'])} samples could not be read, "
                    f"{int(values['skipped_images'])} had no valid depth pixel); check its "
                    "shards or root and the warnings above"
                )
            for metric in LOGGED_VALUES:
                value = values[metric].float()
                log(f"{stage}/{name}/{metric}", value, add_dataloader_idx=False)
                if i == 0 and metric in HEADLINE_VALUES:
                    log(f"{stage}/{metric}", value, prog_bar=True, add_dataloader_idx=False)
            self.metrics[key].reset()
            if stage == "test":
                self.per_image_results[name] = self._gather_rows(key)

    def _gather_rows(self, key: str) -> list[dict[str, Any]]:
        """This split's per-image rows of all ranks, sorted by key (and this rank's cleared)."""
        rows, self._rows[key] = self._rows[key], []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Keys are strings: LightningModule.all_gather only takes tensors.
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, rows)
            rows = [row for part in parts for row in part]
        return sorted(rows, key=lambda row: row["key"])
