"""dm_lightning: DepthMaster single-step diffusion depth estimation on PyTorch Lightning."""

from dm_lightning.data.datamodule import BenchmarkDataModule, DepthDataModule, TrainSource
from dm_lightning.data.evaluation import BenchmarkSpec
from dm_lightning.models.depthmaster import DepthMaster, load_depthmaster
from dm_lightning.models.encoders import AlignmentEncoder, TimmEncoder
from dm_lightning.models.feature_alignment import FeatureAlignment
from dm_lightning.models.fourier import FourierEnhancement
from dm_lightning.targets import Depth, Disparity, SqrtDisparity
from dm_lightning.training.base import DepthMasterTask
from dm_lightning.training.callbacks import (
    DepthPredictionWriter,
    ExportDepthMaster,
    ResumableCheckpoint,
)
from dm_lightning.training.report import EvaluationReport
from dm_lightning.training.stage1 import Stage1
from dm_lightning.training.stage2 import Stage2

__all__ = [
    "AlignmentEncoder",
    "BenchmarkDataModule",
    "BenchmarkSpec",
    "Depth",
    "DepthDataModule",
    "DepthMaster",
    "DepthMasterTask",
    "DepthPredictionWriter",
    "Disparity",
    "EvaluationReport",
    "ExportDepthMaster",
    "FeatureAlignment",
    "FourierEnhancement",
    "ResumableCheckpoint",
    "SqrtDisparity",
    "Stage1",
    "Stage2",
    "TimmEncoder",
    "TrainSource",
    "load_depthmaster",
]
