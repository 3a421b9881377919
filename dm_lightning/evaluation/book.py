"""Evaluation bookkeeping of a task: per-split metrics, skip counters and per-image rows.

:class:`EvaluationBook` holds, for every validation and test split, a
:class:`~dm_lightning.evaluation.metrics.DepthMetrics` and a count of the samples the data streams
skipped (both synchronised over ranks with ``dist_reduce_fx="sum"``), and for test splits the
per-image metric rows, gathered over ranks at the end of the epoch. The LightningModule runs
the network and hands the book its predictions; the book scores, logs and reports (the
terminal's table of the logged values is
:func:`~dm_lightning.evaluation.tables.terminal_results_table`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchmetrics import SumMetric

from dm_lightning.errors import DataError
from dm_lightning.evaluation.keys import metric_key
from dm_lightning.evaluation.metrics import DepthMetrics
from dm_lightning.evaluation.scoring import METRIC_NAMES, evaluate_batch

# The values logged per split as <stage>/<split>/<name>; the first split's abs_rel and delta1
# are also logged as <stage>/<name> (val/abs_rel drives checkpoint selection).
LOGGED_VALUES = (*METRIC_NAMES, "num_images", "skipped_images", "skipped_samples")
HEADLINE_VALUES = ("abs_rel", "delta1")


class _ScoredBatch(NamedTuple):
    """A test batch's per-image scores, kept where they were computed until the epoch ends
    (converting them per batch would make the host wait for the device on every batch)."""

    keys: list[str]  # the B image keys
    values: Tensor  # (B, len(METRIC_NAMES)) float64, columns in METRIC_NAMES order
    has_valid: Tensor  # (B,) bool: the image had a valid pixel (else its row is left out)


def split_key(stage: str, name: str) -> str:
    """Module key of split ``name`` of ``stage`` ("val" or "test"); ModuleDict keys may not
    contain dots."""
    return f"{stage}__{name}".replace(".", "_")


class EvaluationBook(nn.Module):
    """Metric state of the validation and test splits.

    Args:
        space: alignment space of the per-image scale/shift fit (see
            :func:`~dm_lightning.evaluation.alignment.align_prediction`).

    ``per_image_results`` maps a test split name to its per-image rows of all ranks
    (``{"key": str, <metric>: float, ...}``, sorted by key; images without a valid pixel left
    out, as in the logged means), filled by :meth:`compute_and_log` of the test stage.
    """

    def __init__(self, space: str) -> None:
        super().__init__()
        self.space = space
        self.metrics = nn.ModuleDict()
        # Corrupt samples the data streams skipped, synchronised like the metrics. Counted on
        # the host per batch and handed to the SumMetric once per epoch: its update copies the
        # number to the device and checks it for NaN, two waits on the device per batch.
        self.skipped = nn.ModuleDict()
        self._skipped_counts: dict[str, float] = {}
        # Test splits' scored batches, on the device; rows only in _gather_rows.
        self._rows: dict[str, list[_ScoredBatch]] = {}
        self.per_image_results: dict[str, list[dict[str, Any]]] = {}

    def build(self, splits: dict[str, Iterable[str]], device: torch.device) -> None:
        """Fresh state for ``splits`` (stage -> split names), on ``device``. Called in each
        (possibly spawned) process, so the state is never shared across ranks."""
        keys = [split_key(stage, name) for stage, names in splits.items() for name in names]
        self.metrics = nn.ModuleDict({k: DepthMetrics(space=self.space) for k in keys}).to(device)
        self.skipped = nn.ModuleDict({k: SumMetric() for k in keys}).to(device)
        self._skipped_counts = dict.fromkeys(keys, 0.0)
        self._rows = {k: [] for k in keys}

    def update(self, stage: str, name: str, batch: dict[str, Any], pred: Tensor | None) -> None:
        """Add an eval batch of split ``name``: its ``skipped`` count, and (``pred`` not None:
        the network's (B, 1, H, W) relative depth) its scores, plus for test its per-image
        scores and keys (kept as device tensors; rows are made once per epoch, in
        :meth:`compute_and_log`, so that no batch waits on a device->host copy).

        Raises:
            ValueError: a test batch whose ``key`` list does not have one key per prediction.
        """
        key = split_key(stage, name)
        self._skipped_counts[key] += float(batch.get("skipped", 0))  # a Python int: no sync
        if pred is None:
            return
        gt_args = (batch["depth"], batch["valid"], batch["min_depth"], batch["max_depth"])
        values, has_valid = evaluate_batch(pred, *gt_args, space=self.space)
        self.metrics[key].update_values(values, has_valid)
        if stage == "test":
            keys = list(batch["key"])
            if len(keys) != len(has_valid):
                raise ValueError(
                    f"test split {name!r}: the batch has {len(keys)} keys for "
                    f"{len(has_valid)} predictions"
                )
            table = torch.stack([values[metric] for metric in METRIC_NAMES], dim=1)
            self._rows[key].append(_ScoredBatch(keys, table, has_valid))

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
            self.skipped[key].update(self._skipped_counts[key])
            self._skipped_counts[key] = 0.0
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
                log(metric_key(stage, name, metric), value, add_dataloader_idx=False)
                if i == 0 and metric in HEADLINE_VALUES:
                    headline = metric_key(stage, None, metric)
                    log(headline, value, prog_bar=True, add_dataloader_idx=False)
            self.metrics[key].reset()
            if stage == "test":
                self.per_image_results[name] = self._gather_rows(key)

    def _gather_rows(self, key: str) -> list[dict[str, Any]]:
        """This split's per-image rows of all ranks, sorted by key (and this rank's cleared)."""
        scored, self._rows[key] = self._rows[key], []
        rows = _rows_of(scored)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Keys are strings: LightningModule.all_gather only takes tensors.
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, rows)
            rows = [row for part in parts for row in part]
        return sorted(rows, key=lambda row: row["key"])


def _rows_of(scored: list[_ScoredBatch]) -> list[dict[str, Any]]:
    """``{"key": str, <metric>: float, ...}`` rows of the images with a valid pixel (the others
    are left out, as in the logged means), in batch order. All batches are copied to the host
    in one ``tolist``: one sync per split and epoch."""
    if not scored:
        return []
    # has_valid rides along as a last column (1.0 / 0.0), so that one copy brings everything.
    table = torch.cat([torch.cat([s.values, s.has_valid[:, None].double()], 1) for s in scored])
    keys = [k for s in scored for k in s.keys]
    return [
        {"key": k, **dict(zip(METRIC_NAMES, row[:-1]))}
        for k, row in zip(keys, table.tolist())
        if row[-1]
    ]
