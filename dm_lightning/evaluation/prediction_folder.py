"""Evaluate any model's predictions, saved as files, by the protocol of ``dm-lightning test``.

:class:`PredictionFolder` is an :class:`~dm_lightning.evaluation.task.EvaluationTask`
without a network: its eval step reads the prediction of each sample of the batch from a
folder instead of running a model, and hands it to the same evaluation book as
:class:`~dm_lightning.training.base.DepthMasterTask`. So a folder is evaluated with the same
benchmark readers, crops, masks, alignment, metrics and report as ``test`` of a model, by
construction (docs/method.md §6)::

    dm-lightning test --config configs/eval/predictions.yaml \\
        --config configs/eval/benchmarks.yaml \\
        --model.init_args.predictions path/to/predictions --model.init_args.space depth

File formats and where each image's file is looked for: :mod:`dm_lightning.inference.
prediction_files`. A prediction of another size than the ground truth is resized to it as the
network's output is (:func:`~dm_lightning.models.pipeline_depthmaster.resize_bilinear`); for
a benchmark whose reader crops (KITTI's KB crop), a prediction of the uncropped image's size
is cropped like the image first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor

from dm_lightning.data.benchmarks import BenchmarkSpec, DepthPairDataset, ListEntry
from dm_lightning.data.contract import depth_data
from dm_lightning.errors import ConfigError, InputFileError, MissingPathError
from dm_lightning.evaluation.prediction_files import (
    PREDICTION_SUFFIXES,
    find_prediction,
    prediction_candidates,
    read_prediction,
)
from dm_lightning.evaluation.task import EvaluationTask
from dm_lightning.models.pipeline_depthmaster import resize_bilinear
from dm_lightning.targets import ALIGNMENT_SPACES, check_alignment_space, get_target

#: Spaces whose files may be fitted in another space: their values are converted exactly
#: (1/x, sqrt) when known up to a scale only, as metric or scale-invariant depth and disparity
#: are. An unknown shift (affine-invariant values, as sqrt_disparity always is here) has no
#: exact value in another space.
CONVERTIBLE_SPACES = ("depth", "disparity")
#: What the settings record as the processing resolution of predictions made elsewhere.
AS_PREDICTED = "as predicted"
#: Relative aspect-ratio difference from the GT's beyond which a prediction is warned about:
#: a working size rounded to multiples of 8 or 14 pixels stays well within 5%.
ASPECT_TOLERANCE = 0.05


@dataclass(frozen=True)
class _Listed:
    """A benchmark image's prediction file, with what cropping it may need."""

    path: Path
    entry: ListEntry
    dataset: DepthPairDataset


class PredictionFolder(EvaluationTask):
    """The predictions of another model, read from files, as an evaluated task: use with
    ``dm-lightning test`` or ``validate`` (nothing to train or predict).

    Args:
        predictions: the folder holding one prediction file per image of every evaluated
            split, or split name -> its folder. Each image's file is its list path with the
            suffix swapped, or its sample key, as ``.npy``, ``.pfm`` or 16-bit ``.png``
            (:func:`~dm_lightning.evaluation.prediction_files.prediction_candidates`).
        space: the space the files' values are in, each image up to an unknown scale and
            shift: ``depth`` (far is larger), ``disparity`` (1 / depth) or ``sqrt_disparity``
            (sqrt(1 / depth), dm_lightning's own relative output: ``dm-lightning predict``'s
            ``.npy`` of the default target, 1 = near).
        fit_space: the space the per-image scale and shift are fitted in
            (:data:`~dm_lightning.targets.ALIGNMENT_SPACES`); default ``space``. Another
            space
            converts the values exactly (depth <-> 1 / depth, sqrt), which is right for values
            known up to a scale only (metric or scale-invariant depth or disparity, all > 0),
            so it is allowed for ``space`` depth or disparity, not for sqrt_disparity.

    Raises:
        ConfigError: no ``predictions`` or ``space`` (both required), an unknown space, or a
            fit space the values cannot be converted to.
        MissingPathError: a prediction folder that does not exist; at set-up, images of a
            benchmark list without a prediction file (how many, and the files expected).
    """

    def __init__(
        self,
        predictions: str | dict[str, str] | None = None,
        space: str | None = None,
        fit_space: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Required, but checked here: jsonargparse's own message for a missing one is a dump.
        if predictions is None:
            raise ConfigError(
                "model.init_args.predictions is required: the folder of the prediction files "
                "(or benchmark name -> folder)"
            )
        if space is None:
            raise ConfigError(
                "model.init_args.space is required: the space of the prediction files' values, "
                f"each image up to scale and shift: {', '.join(ALIGNMENT_SPACES)}"
            )
        for key, value in (("space", space), ("fit_space", fit_space or space)):
            check_alignment_space(value, f"model.init_args.{key}")
        fit_space = fit_space or space
        if fit_space != space and space not in CONVERTIBLE_SPACES:
            raise ConfigError(
                f"model.init_args.fit_space {fit_space!r}: predictions in {space} space are "
                f"affine-invariant (an unknown scale and shift), and with an unknown shift "
                f"they have no exact value in another space; fit them in {space} space (the "
                f"default), or fit depth or disparity predictions known up to a scale only"
            )
        folders = predictions if isinstance(predictions, dict) else {"": predictions}
        for name, folder in folders.items():
            if not Path(folder).is_dir():
                where = f"[{name}]" if name else ""
                raise MissingPathError(f"model.init_args.predictions{where}: no folder {folder}")
        self.folders = {name: Path(folder) for name, folder in folders.items()}
        self.space = space
        self.eval_alignment = fit_space
        self.configure_metrics()
        # (stage, split) -> sample key -> its file, for the benchmark splits (set up in setup)
        self._listed: dict[tuple[str, str], dict[str, _Listed]] = {}
        self._warned_aspect: set[tuple[str, str]] = set()

    def folder_of(self, split: str) -> Path:
        """The prediction folder of split ``split``.

        Raises:
            ConfigError: ``predictions`` maps splits to folders and names none for ``split``.
        """
        folder = self.folders.get(split, self.folders.get(""))
        if folder is None:
            raise ConfigError(
                f"model.init_args.predictions names folders for {', '.join(self.folders)}, "
                f"not for split {split!r}"
            )
        return folder

    # ---- finding the files --------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Find the file of every image of every benchmark split of ``stage`` before any
        is evaluated: a missing one stops the run here, naming how many are missing."""
        super().setup(stage)
        loader_stage = {"fit": "val", "validate": "val"}.get(stage, stage)
        data = depth_data(self.trainer.datamodule)
        for name, spec in (data.eval_splits(loader_stage) if data else {}).items():
            if isinstance(spec, BenchmarkSpec):
                dataset = data.eval_dataset(name, loader_stage)
                self._listed[loader_stage, name] = self._list_files(name, dataset)

    def _list_files(self, split: str, dataset: DepthPairDataset) -> dict[str, _Listed]:
        folder = self.folder_of(split)
        found, missing = {}, []
        for key, entry in zip(dataset.keys, dataset.entries):
            path = find_prediction(folder, entry.rgb, key)
            if path is None:
                missing.append((entry.rgb, key))
            else:
                found[key] = _Listed(path, entry, dataset)
        if missing:
            rel, key = missing[0]
            expected = prediction_candidates(folder, rel, key)[0]
            shown = ", ".join(r for r, _ in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise MissingPathError(
                f"{len(missing)} of {len(dataset)} images of split {split!r} have no prediction "
                f"file in {folder}: expected, for {rel}, {expected} (or {key}.npy, as "
                f"dm-lightning predict names it; {' / '.join(PREDICTION_SUFFIXES)} each); "
                f"images without one: {shown}"
            )
        return found

    # ---- reading them -------------------------------------------------------------------
    def eval_prediction(self, batch: dict[str, Any], stage: str, dataloader_idx: int) -> Tensor:
        """The batch's predictions read from their files, at the GT size, in the fit space:
        (B, 1, H, W) float32 (float64 if a file holds 64-bit values) on the batch's device."""
        split = self._eval_names(stage)[dataloader_idx]
        size = tuple(batch["depth"].shape[-2:])
        maps = [self._read(stage, split, key, size) for key in batch["key"]]
        dtype = torch.float64 if any(m.dtype == torch.float64 for m in maps) else torch.float32
        return torch.stack([m.to(dtype) for m in maps]).to(batch["depth"].device)

    def _read(self, stage: str, split: str, key: str, size: tuple[int, int]) -> Tensor:
        """(1, H, W) prediction of sample ``key`` at the GT ``size``, in the fit space."""
        listed = self._listed.get((stage, split), {}).get(key)
        if listed is None:  # a shard split (or no DataModule): by sample key
            folder = self.folder_of(split)
            path = find_prediction(folder, None, key)
            if path is None:
                raise MissingPathError(
                    f"no prediction file for sample {key!r} of split {split!r}: expected "
                    f"{folder / key}.npy (or .pfm / .png); shard samples are matched by key "
                    "as they are read, so this is the first one missing"
                )
            array = read_prediction(path)
        else:
            path = listed.path
            array = _as_listed(read_prediction(path), listed, size)
        values = torch.from_numpy(np.ascontiguousarray(array))[None, None]
        if tuple(values.shape[-2:]) != size:
            self._check_aspect(stage, split, path, array.shape, size)
            values = resize_bilinear(values, size)
        return self._in_fit_space(values[0], path)

    def _check_aspect(
        self, stage: str, split: str, path: Path, shape: tuple[int, ...], size: tuple[int, int]
    ) -> None:
        """Warn (once per split) about a prediction whose aspect ratio is not the GT's: it is
        resized anyway, as the network's output is, but a transposed map or another crop
        would score badly for reasons that are not the model's."""
        ratio = (shape[0] / shape[1]) / (size[0] / size[1])
        if abs(ratio - 1.0) > ASPECT_TOLERANCE and (stage, split) not in self._warned_aspect:
            self._warned_aspect.add((stage, split))
            rank_zero_warn(
                f"{path}: the prediction is {shape[0]}x{shape[1]} and the ground truth "
                f"{size[0]}x{size[1]}, aspect ratios {abs(ratio - 1.0):.0%} apart: resized to "
                f"the ground truth anyway (further ones of split {split!r} are not reported)"
            )

    def _in_fit_space(self, values: Tensor, path: Path) -> Tensor:
        """``values`` (in ``space``) in the fit space: unchanged when they are the same,
        else through depth (only for the :data:`CONVERTIBLE_SPACES`, all values > 0)."""
        if self.eval_alignment == self.space:
            return values
        bad = int((values <= 0).sum())
        if bad:
            raise InputFileError(
                f"{path}: {bad} of {values.numel()} values are <= 0, so they have no "
                f"{self.eval_alignment} value: fitting {self.space} predictions in another "
                f"space needs every value > 0 (or fit in {self.space} space)"
            )
        depth = values if self.space == "depth" else 1.0 / values
        return get_target(self.eval_alignment).forward(depth)

    def evaluation_settings(self, stage: str = "test") -> dict[str, Any]:
        """The prediction folder(s), the space of their values, the fit space, and as each
        split's processing resolution "as predicted" (another program made them)."""
        folders = {n: str(f) for n, f in self.folders.items()}
        return {
            "predictions": folders.get("", folders),
            "prediction_space": self.space,
            **super().evaluation_settings(stage),
            "processing_res": dict.fromkeys(self._eval_names(stage), AS_PREDICTED),
        }


def _as_listed(array: np.ndarray, listed: _Listed, size: tuple[int, int]) -> np.ndarray:
    """A benchmark prediction of another size than the GT's: if its reader crops images
    (KITTI's KB crop) and the prediction has the uncropped image's size, cropped the same
    way; else as it is (the resize to the GT size follows)."""
    dataset = listed.dataset
    if array.shape == size or type(dataset).crop is DepthPairDataset.crop:
        return array
    with Image.open(io.BytesIO(dataset.store.read(listed.entry.rgb))) as image:
        width, height = image.size  # the header only: nothing is decoded
    if array.shape != (height, width):
        return array
    return dataset.crop(array, listed.entry.rgb)
