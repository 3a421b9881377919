"""dm_lightning: DepthMaster single-step diffusion depth estimation on PyTorch Lightning.

The public names below are imported lazily (PEP 562), on first attribute access: importing a
submodule such as ``dm_lightning.data.shards`` or ``dm_lightning.data.schema`` (shard tools,
converters) does not import torch's training stack or Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> module that defines it.
_EXPORTS = {
    "AlignedDepthMaster": "dm_lightning.models.stage1_network",
    "AlignmentEncoder": "dm_lightning.models.encoders",
    "BenchmarkDataModule": "dm_lightning.data.datamodule",
    "BenchmarkSpec": "dm_lightning.data.benchmarks",
    "Depth": "dm_lightning.targets",
    "DepthDataModule": "dm_lightning.data.datamodule",
    "DepthMaster": "dm_lightning.models.depthmaster",
    "DepthMasterPipeline": "dm_lightning.models.pipeline_depthmaster",
    "DepthMasterTask": "dm_lightning.training.base",
    "DepthPredictionWriter": "dm_lightning.training.callbacks",
    "Disparity": "dm_lightning.targets",
    "E2EFT": "dm_lightning.baselines.e2e_ft",
    "EMAWeights": "dm_lightning.training.ema",
    "EvaluationReport": "dm_lightning.evaluation.report",
    "ExportDepthMaster": "dm_lightning.training.callbacks",
    "FeatureAlignment": "dm_lightning.models.feature_alignment",
    "FourierEnhancement": "dm_lightning.models.fourier",
    "LotusD": "dm_lightning.baselines.lotus",
    "Marigold": "dm_lightning.baselines.marigold_task",
    "MarigoldNetwork": "dm_lightning.baselines.marigold",
    "PredictionFolder": "dm_lightning.evaluation.prediction_folder",
    "ResumableCheckpoint": "dm_lightning.training.resumable",
    "SqrtDisparity": "dm_lightning.targets",
    "Stage1": "dm_lightning.training.stage1",
    "Stage2": "dm_lightning.training.stage2",
    "TimmEncoder": "dm_lightning.models.encoders",
    "TrainSource": "dm_lightning.data.train_source",
    "TrainingMonitor": "dm_lightning.training.monitor",
    "load_depthmaster": "dm_lightning.models.loading",
    "PredictionSummary": "dm_lightning.inference.outputs",
    "predict_images": "dm_lightning.inference.api",
}

__all__ = [
    "AlignedDepthMaster",
    "AlignmentEncoder",
    "BenchmarkDataModule",
    "BenchmarkSpec",
    "Depth",
    "DepthDataModule",
    "DepthMaster",
    "DepthMasterPipeline",
    "DepthMasterTask",
    "DepthPredictionWriter",
    "Disparity",
    "E2EFT",
    "EMAWeights",
    "EvaluationReport",
    "ExportDepthMaster",
    "FeatureAlignment",
    "FourierEnhancement",
    "LotusD",
    "Marigold",
    "MarigoldNetwork",
    "PredictionFolder",
    "ResumableCheckpoint",
    "SqrtDisparity",
    "Stage1",
    "Stage2",
    "TimmEncoder",
    "TrainSource",
    "TrainingMonitor",
    "load_depthmaster",
    "PredictionSummary",
    "predict_images",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dm_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from dm_lightning.baselines.e2e_ft import E2EFT
    from dm_lightning.baselines.lotus import LotusD
    from dm_lightning.baselines.marigold import MarigoldNetwork
    from dm_lightning.baselines.marigold_task import Marigold
    from dm_lightning.data.benchmarks import BenchmarkSpec
    from dm_lightning.data.datamodule import BenchmarkDataModule, DepthDataModule
    from dm_lightning.data.train_source import TrainSource
    from dm_lightning.evaluation.prediction_folder import PredictionFolder
    from dm_lightning.evaluation.report import EvaluationReport
    from dm_lightning.inference.api import predict_images
    from dm_lightning.inference.outputs import PredictionSummary
    from dm_lightning.models.depthmaster import DepthMaster
    from dm_lightning.models.encoders import AlignmentEncoder, TimmEncoder
    from dm_lightning.models.feature_alignment import FeatureAlignment
    from dm_lightning.models.fourier import FourierEnhancement
    from dm_lightning.models.loading import load_depthmaster
    from dm_lightning.models.pipeline_depthmaster import DepthMasterPipeline
    from dm_lightning.models.stage1_network import AlignedDepthMaster
    from dm_lightning.targets import Depth, Disparity, SqrtDisparity
    from dm_lightning.training.base import DepthMasterTask
    from dm_lightning.training.callbacks import DepthPredictionWriter, ExportDepthMaster
    from dm_lightning.training.ema import EMAWeights
    from dm_lightning.training.monitor import TrainingMonitor
    from dm_lightning.training.resumable import ResumableCheckpoint
    from dm_lightning.training.stage1 import Stage1
    from dm_lightning.training.stage2 import Stage2
