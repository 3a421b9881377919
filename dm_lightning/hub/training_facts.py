"""What an export folder records about the model and its training, for its model card.

Sources, all optional except the export itself:

- ``<export>/dm_lightning.json`` (:meth:`~dm_lightning.models.depthmaster.DepthMaster.
  save_pretrained`): stage, training target, global step, default processing resolution, FE
  block;
- the run's ``config.yaml`` (saved by LightningCLI in the run folder), copied into the export as
  :data:`CONFIG_FILE` when the card is first written, so the folder alone describes its
  training wherever it is moved or uploaded;
- the model the run started from (``model.init_args.model_path``): a hub id is the base model;
  a local folder with a model card (a stage-1 export) passes on the base model its card records.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from dm_lightning.models.model_facts import METADATA_FILE, ModelFacts
from dm_lightning.models.model_paths import HUB_ID

CONFIG_FILE = "dm_lightning_config.yaml"
"""The training run's LightningCLI config, copied into the export."""

SD2 = "stabilityai/stable-diffusion-2"

# Training source names of the shipped data configs -> data set names for the card's
# ``datasets``. Neither has an official hub data set (Dec 2026), so these are names, not ids.
KNOWN_DATASETS = {
    "hypersim": "Hypersim",
    "vkitti": "Virtual KITTI 2",
    "vkitti2": "Virtual KITTI 2",
    "virtual_kitti": "Virtual KITTI 2",
    "virtual_kitti_2": "Virtual KITTI 2",
}

# Hyper-parameters shown in the card's training table: (label, path in the run config).
SHOWN_SETTINGS = (
    ("optimizer steps (max)", ("trainer", "max_steps")),
    ("precision", ("trainer", "precision")),
    ("global batch", ("data", "init_args", "global_batch_size")),
    ("learning rate", ("model", "init_args", "lr")),
    ("warm-up steps", ("model", "init_args", "warmup_steps")),
    ("decay steps", ("model", "init_args", "decay_steps")),
    ("Feature Alignment location", ("model", "init_args", "fa_location")),
    ("Feature Alignment loss", ("model", "init_args", "fa_loss")),
    ("Feature Alignment weight", ("model", "init_args", "fa_weight")),
    ("Fourier Enhancement", ("model", "init_args", "fourier")),
    ("gradient loss weight", ("model", "init_args", "gradient_weight")),
    ("seed", ("seed_everything",)),
)


@dataclass
class TrainingSource:
    """One training data source of the run: ``name``, ``shards`` pattern, mixing
    ``probability`` (None when not configured)."""

    name: str
    shards: str
    probability: float | None = None


@dataclass
class TrainingFacts:
    """What the card says about a model.

    Attributes:
        stage: 1 or 2 (None: not recorded, e.g. a folder saved by hand).
        task: the LightningModule class that trained it (``Stage1``), as recorded.
        method: the method a baseline's export records (``e2e_ft``, ``lotus_d``,
            ``marigold``); None for DepthMaster.
        task_class: the task class that loads a baseline's export (``dm_lightning.E2EFT``).
        model: what the model records (:class:`~dm_lightning.models.model_facts.ModelFacts`:
            its target, so whether 1 = near, and predict's default long edge), read by the
            model's loaders' own rule; the run config's target when the folder records none.
        global_step: optimizer steps trained.
        fourier: whether the U-Net carries the Fourier Enhancement block.
        started_from: the run's ``model_path`` (hub id or local folder), as configured.
        base_model: hub id of the original base weights, when known.
        sources: the training data sources.
        settings: (label, value) of the shown hyper-parameters present in the config.
        config_text: the run's config YAML ("" when none was found).
    """

    stage: int | None = None
    task: str | None = None
    method: str | None = None
    task_class: str | None = None
    model: ModelFacts = ModelFacts()
    global_step: int | None = None
    fourier: bool = False
    started_from: str | None = None
    base_model: str | None = None
    sources: list[TrainingSource] = field(default_factory=list)
    settings: list[tuple[str, Any]] = field(default_factory=list)
    config_text: str = ""

    @property
    def datasets(self) -> list[str]:
        """Known data set names of the training sources, without repeats, in order."""
        names = (KNOWN_DATASETS.get(s.name.lower()) for s in self.sources)
        return list(dict.fromkeys(n for n in names if n))


def hub_id(model_path: str | None) -> str | None:
    """``model_path`` as a hub repository id (``owner/name``, ``hf://owner/name``), or None
    for a local path (an existing folder, or one starting with ``.``, ``/``, ``~``)."""
    if not model_path:
        return None
    if model_path.startswith("hf://"):
        return model_path[len("hf://") :]
    if model_path.startswith((".", "/", "~")) or Path(model_path).expanduser().exists():
        return None
    return model_path if HUB_ID.fullmatch(model_path) else None


def recorded_base_model(model_path: str | None) -> str | None:
    """The base model a run's ``model_path`` stands for: a hub id itself; for a local folder
    with a model card (a stage-1 export), the ``base_model`` its card records; else None."""
    repo = hub_id(model_path)
    if repo is not None or not model_path:
        return repo
    card = Path(model_path).expanduser() / "README.md"
    if not card.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        base = ModelCard.load(card).data.base_model
    except Exception:  # a hand-written README without valid metadata: no recorded base
        return None
    return base if isinstance(base, str) else None


def copy_run_config(export: Path, run_config: Path | None) -> None:
    """Copy the run's ``config.yaml`` into ``export`` as :data:`CONFIG_FILE` (if it exists)."""
    if run_config is not None and Path(run_config).is_file():
        shutil.copyfile(run_config, Path(export) / CONFIG_FILE)


def read_training_facts(export: Path) -> TrainingFacts:
    """The :class:`TrainingFacts` of an export folder, from its ``dm_lightning.json`` and its
    :data:`CONFIG_FILE` (both optional: what is missing stays None / empty)."""
    export = Path(export)
    facts = TrainingFacts()
    meta_path = export / METADATA_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    facts.task = meta.get("stage")
    facts.stage = {"Stage1": 1, "Stage2": 2}.get(str(facts.task))
    facts.method, facts.task_class = meta.get("method"), meta.get("task")
    facts.model = ModelFacts.from_record(meta)
    facts.global_step = meta.get("global_step")
    facts.fourier = bool(meta.get("fourier_enhancement", False))
    config_path = export / CONFIG_FILE
    if not config_path.is_file():
        return facts
    facts.config_text = config_path.read_text()
    config = yaml.safe_load(facts.config_text) or {}
    init = (config.get("model") or {}).get("init_args") or {}
    facts.started_from = init.get("model_path")
    facts.base_model = recorded_base_model(facts.started_from)
    if facts.model.recorded_target is None and init.get("target"):
        facts.model = replace(facts.model, recorded_target=str(init["target"]))
    train = ((config.get("data") or {}).get("init_args") or {}).get("train") or []
    facts.sources = [
        TrainingSource(str(s.get("name", "?")), str(s.get("shards", "")), s.get("probability"))
        for s in train
        if isinstance(s, dict)
    ]
    for label, keys in SHOWN_SETTINGS:
        value: Any = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            facts.settings.append((label, value))
    return facts
