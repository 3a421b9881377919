"""What a model records about itself: its training target (and so whether 1 means near) and
the long edge ``predict`` runs it at by default, read in one place.

diffusers keeps such facts in a model's config (``register_to_config``): an export's
``model_index.json`` holds :class:`~dm_lightning.models.pipeline_depthmaster.DepthMasterPipeline`'s
``target`` and ``default_processing_resolution``. dm_lightning's loaders read the same facts
from what a model path records (an export's ``dm_lightning.json``, a stage checkpoint's
hyper-parameters, an ONNX graph's metadata) into a :class:`ModelFacts` the loaded network
carries as ``net.facts``; :func:`recorded_facts` answers for a path that is not loaded. Both
fall back by one rule (:class:`ModelFacts`): the recipe's target and 768 pixels.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dm_lightning.errors import ConfigError
from dm_lightning.models.onnx_metadata import read_graph_metadata
from dm_lightning.models.pipeline_depthmaster import (
    DEFAULT_PROCESSING_RES,
    DEFAULT_TARGET,
    near_is_one,
)
from dm_lightning.models.state_dicts import load_torch_file

METADATA_FILE = "dm_lightning.json"
CHECKPOINT_SUFFIX = ".ckpt"


def is_checkpoint_path(path: str | Path) -> bool:
    """Whether a model path names a Lightning checkpoint file (``*.ckpt``) rather than a model
    folder or hub id."""
    return str(path).endswith(CHECKPOINT_SUFFIX)


@dataclass(frozen=True)
class ModelFacts:
    """The facts a model records (None: not recorded), and what they mean for its use.

    Attributes:
        recorded_target: the training target (``sqrt_disparity``, ``disparity``, ``depth``).
        recorded_processing_res: predict's default long edge in pixels (a positive integer).
    """

    recorded_target: str | None = None
    recorded_processing_res: int | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ModelFacts:
        """The facts of a ``dm_lightning.json``-like dict (``target``, ``processing_res``);
        values of the wrong kind count as not recorded."""
        target, res = record.get("target"), record.get("processing_res")
        usable = isinstance(res, int) and not isinstance(res, bool) and res > 0
        return cls(str(target) if target else None, res if usable else None)

    def to_record(self) -> dict[str, Any]:
        """The recorded facts as ``dm_lightning.json`` keys (``target``, ``processing_res``),
        those not recorded left out; :meth:`from_record` reads them back."""
        record = {"target": self.recorded_target, "processing_res": self.recorded_processing_res}
        return {key: value for key, value in record.items() if value is not None}

    @property
    def target(self) -> str:
        """The training target, the recipe's ``sqrt_disparity`` when none is recorded."""
        return self.recorded_target or DEFAULT_TARGET

    @property
    def near_is_one(self) -> bool:
        """Whether 1 means near in the model's predictions (every target but ``depth``)."""
        return near_is_one(self.target)

    @property
    def processing_res(self) -> int:
        """Predict's default long edge in pixels: the recorded one, else 768
        (:data:`~dm_lightning.models.pipeline_depthmaster.DEFAULT_PROCESSING_RES`)."""
        return self.recorded_processing_res or DEFAULT_PROCESSING_RES


def recorded_facts(path: str | Path) -> ModelFacts:
    """The :class:`ModelFacts` recorded with a model path: an export's ``dm_lightning.json``
    (an ONNX graph's metadata); a checkpoint's ``target`` and ``processing_res``
    hyper-parameters, the latter else the one recorded with its ``model_path`` (a folder).
    Nothing recorded or readable (the released model, SD-2 weights, a hub id not fetched, a
    missing path) gives the empty facts. A checkpoint is memory-mapped, not read whole."""
    record = _record(path)
    facts = ModelFacts.from_record(record)
    base = record.get("model_path")
    if record.get("processing_res") is None and is_checkpoint_path(path) and base:
        if not is_checkpoint_path(base):
            res = recorded_facts(base).recorded_processing_res
            facts = ModelFacts(facts.recorded_target, res)
    return facts


def recorded_target(path: str | Path) -> str | None:
    """The training target recorded with a model path (:func:`recorded_facts`); None when
    nothing is recorded."""
    return recorded_facts(path).recorded_target


def recorded_processing_res(path: str | Path) -> int | None:
    """Predict's long edge recorded with a model path (:func:`recorded_facts`); None when
    nothing usable is recorded (then
    :data:`~dm_lightning.models.pipeline_depthmaster.DEFAULT_PROCESSING_RES`)."""
    return recorded_facts(path).recorded_processing_res


def recorded_method(path: str | Path) -> str | None:
    """The method a model folder's ``dm_lightning.json`` records (a baseline's export, e.g.
    ``"marigold"``); None for DepthMaster's folders, SD-2 and anything unreadable."""
    method = _record(path).get("method")
    return method if isinstance(method, str) and method else None


def recorded_task(path: str | Path) -> str | None:
    """The task class (``dm_lightning.E2EFT``, ...) that loads a baseline's export, as its
    ``dm_lightning.json`` records it; None for DepthMaster's folders and anything else."""
    task = _record(path).get("task")
    return task if isinstance(task, str) and task else None


def recorded_setting(path: str | Path, key: str) -> Any:
    """``key`` of a model folder's ``dm_lightning.json`` (a checkpoint's hyper-parameters), e.g.
    a baseline's inference settings; None when absent or unreadable. The caller checks the
    type."""
    return _record(path).get(key)


def _record(path: str | Path) -> dict[str, Any]:
    """An export's ``dm_lightning.json``, a checkpoint's hyper-parameters (memory-mapped) or an
    ONNX graph's metadata; empty when absent or unreadable (the loaders name what is wrong)."""
    if not str(path):
        return {}
    try:
        if is_checkpoint_path(path):
            checkpoint = load_torch_file(Path(path).expanduser(), mmap=True)
            record = checkpoint.get("hyper_parameters") or {}
        elif str(path).endswith(".onnx"):  # an exported graph records the same facts
            record = read_graph_metadata(path)
        else:
            meta = Path(path).expanduser() / METADATA_FILE
            record = json.loads(meta.read_text()) if meta.is_file() else {}
    except (OSError, ValueError, RuntimeError, AttributeError, pickle.UnpicklingError, ConfigError):
        return {}
    return record if isinstance(record, dict) else {}
