"""What the tasks and callbacks may ask of a DataModule (:class:`DepthData`), checked once.

The tasks name their evaluation splits after the DataModule, run each split at its own
processing resolution, check the training sources' sizes against the VAE before the first
step, and the callbacks record what a split evaluates. A DataModule that keeps this contract
(:class:`~dm_lightning.data.datamodule.DepthDataModule` and its
:class:`~dm_lightning.data.datamodule.BenchmarkDataModule`) is recognised by
:func:`depth_data`; without one (no DataModule: loaders passed to the trainer, or another
``LightningDataModule``) every consumer falls back to what needs no DataModule: one split
named ``default`` at the model's ``processing_res``, no source check, no split settings.
The batches themselves are typed in :mod:`dm_lightning.data.batch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from dm_lightning.data.benchmarks import BenchmarkSpec


@runtime_checkable
class DepthData(Protocol):
    """The DataModule side of the contract between data and tasks.

    Attributes:
        predict_path: the folder or glob of images ``predict`` runs over, or None (then it
            runs over the test splits).
    """

    predict_path: str | None

    @property
    def val_names(self) -> list[str]:
        """Validation split names, in ``dataloader_idx`` order."""
        ...

    @property
    def test_names(self) -> list[str]:
        """Test split names, in ``dataloader_idx`` order."""
        ...

    def eval_splits(self, stage: str) -> dict[str, str | BenchmarkSpec]:
        """Split name -> shard pattern or benchmark spec of ``stage`` ("val" or "test"), in
        ``dataloader_idx`` order."""
        ...

    def processing_res(
        self, name: str, stage: str = "test", default: int | None = None
    ) -> int | None:
        """Long edge in pixels split ``name`` of ``stage`` runs at (None = native size);
        ``default`` where the split has none of its own."""
        ...

    def eval_dataset(self, name: str, stage: str = "test") -> Dataset:
        """The reader of benchmark split ``name`` of ``stage``."""
        ...

    def train_resolutions(self) -> dict[str, tuple[int, int]]:
        """Training source name -> (height, width) in pixels of its samples."""
        ...


def depth_data(datamodule: object) -> DepthData | None:
    """``datamodule`` (a trainer's, None when there is none) if it keeps the contract, else
    None: the one place the consumers tell our DataModules from the others."""
    return datamodule if isinstance(datamodule, DepthData) else None
