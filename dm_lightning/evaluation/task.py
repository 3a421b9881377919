"""What every task that ``validate`` and ``test`` evaluate shares (docs/method.md §6).

:class:`EvaluationTask` is the LightningModule base of the ``dm-lightning`` command's models:
:class:`~dm_lightning.training.base.DepthMasterTask` (a network) and
:class:`~dm_lightning.evaluation.prediction_folder.PredictionFolder` (files another model wrote)
both derive from it. It holds the :class:`~dm_lightning.evaluation.book.EvaluationBook` in
the task's fit space, names the splits after the DataModule, and runs the validation and test
steps: the subclass says only how a batch's prediction is made (:meth:`eval_prediction`), so
readers, masks, crops, alignment, metrics and the report are one code path for every model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import lightning as L
from torch import Tensor

from dm_lightning.data.batch import EvalBatch
from dm_lightning.data.contract import depth_data
from dm_lightning.evaluation.book import EvaluationBook


class EvaluationTask(L.LightningModule, ABC):
    """Base of the evaluated tasks (abstract: the CLI lists only the concrete ones).

    Subclasses set ``eval_alignment`` (the fit space, one of
    :data:`~dm_lightning.targets.ALIGNMENT_SPACES`) before :meth:`configure_metrics` runs,
    and define :meth:`eval_prediction`.
    """

    eval_alignment: str

    def configure_metrics(self) -> None:
        """The evaluation book; its per-split state is built in :meth:`setup`."""
        self.evaluation = EvaluationBook(self.eval_alignment)

    @property
    def per_image_results(self) -> dict[str, list[dict[str, Any]]]:
        """Test split name -> [{"key": str, <metric>: float, ...}] of all ranks, sorted by key."""
        return self.evaluation.per_image_results

    def setup(self, stage: str) -> None:
        self.evaluation.build({s: self._eval_names(s) for s in ("val", "test")}, self.device)

    def _eval_names(self, stage: str) -> list[str]:
        data = depth_data(self.trainer.datamodule)
        return (list(data.eval_splits(stage)) if data else []) or ["default"]

    @abstractmethod
    def eval_prediction(self, batch: EvalBatch, stage: str, dataloader_idx: int) -> Tensor:
        """The (B, 1, H, W) prediction of a non-empty eval batch at its ground truth's size
        (H, W of ``batch["depth"]``), in ``eval_alignment`` space up to a per-image scale
        and shift (the book fits them)."""

    def _eval_step(self, batch: EvalBatch, stage: str, dataloader_idx: int) -> None:
        pred = None
        if len(batch["key"]):  # else a stream's report of samples it skipped before any batch
            pred = self.eval_prediction(batch, stage, dataloader_idx)
        self.evaluation.update(stage, self._eval_names(stage)[dataloader_idx], batch, pred)

    def validation_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.evaluation.compute_and_log("val", self._eval_names("val"), self.log)

    def test_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self.evaluation.compute_and_log("test", self._eval_names("test"), self.log)

    def evaluation_settings(self, stage: str = "test") -> dict[str, Any]:
        """The task's settings recorded with its results (``results.json``, ``results.md``
        of :class:`~dm_lightning.evaluation.report.EvaluationReport`): at least ``fit_space``;
        subclasses add what they evaluate (a model, a prediction folder) and, as
        ``processing_res``, split name -> the resolution its predictions were made at."""
        return {"fit_space": self.eval_alignment}
