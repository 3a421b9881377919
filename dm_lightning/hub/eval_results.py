"""Evaluation results of a model, read from what ``dm-lightning test`` and the recipe write.

Accepted (a file, or a folder holding one of them, searched in this order):

- ``results.json`` of :class:`~dm_lightning.evaluation.report.EvaluationReport` (in
  ``<test run>/evaluation/``): ``model`` and ``benchmarks`` (name, kind, num_images, metrics);
- ``test_metrics.json`` of :class:`~dm_lightning.recipes.pipeline.TestMetricsWriter`: flat
  ``test/<split>/<metric>`` values (the split name stands for its kind);
- ``results.json`` of the recipe (``tools/train_depthmaster.py``, the run folder): model name
  -> ``model``, ``metrics``; the entry whose ``model`` is this export is taken.

All values are fractions (AbsRel 0.082, not 8.2), as logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dm_lightning.errors import ConfigError, MissingPathError
from dm_lightning.evaluation.keys import is_stage_key, parse_metric_key
from dm_lightning.evaluation.scoring import METRIC_NAMES

EVAL_FILE = "dm_lightning_eval.json"
"""The results a card shows, stored in the export next to its ``README.md``."""

SEARCHED = ("results.json", "evaluation/results.json", "test_metrics.json")

# Benchmark kinds (data/benchmarks) -> names people know them by.
BENCHMARK_NAMES = {
    "nyu": "NYUv2",
    "kitti": "KITTI",
    "eth3d": "ETH3D",
    "scannet": "ScanNet",
    "diode": "DIODE",
}


@dataclass
class BenchmarkResult:
    """One evaluated test split: ``name`` (the split), ``kind`` (benchmark kind, or the name),
    ``num_images``, ``metrics`` (:data:`~dm_lightning.evaluation.scoring.METRIC_NAMES` ->
    fraction; empty when no image was evaluated) and ``settings`` (its processing resolution,
    list, crop, mask and depth range as the report recorded them; empty when not recorded)."""

    name: str
    kind: str
    num_images: int
    metrics: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset_type(self) -> str:
        """The ``model-index`` data set id: a known benchmark kind, else the split name (a
        generic kind such as ``rgbd_folder`` says nothing)."""
        return self.kind if self.kind in BENCHMARK_NAMES else self.name

    @property
    def pretty_name(self) -> str:
        """``NYUv2 (nyu_test)`` for a known benchmark kind, else the split name."""
        known = BENCHMARK_NAMES.get(self.kind)
        if known is None or self.name == self.kind:
            return known or self.name
        return f"{known} ({self.name})"


@dataclass
class EvalResults:
    """Results of one model: ``model`` (the evaluated model path as recorded, "" unknown),
    ``benchmarks`` in test-split order, ``source`` (the file read) and ``settings`` (the run's
    as the report recorded them: dm_lightning's version, the fit space, ...; empty when not
    recorded)."""

    model: str
    benchmarks: list[BenchmarkResult]
    source: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source": self.source,
            "settings": self.settings,
            "benchmarks": [vars(b) for b in self.benchmarks],
        }

    @classmethod
    def from_json(cls, record: dict[str, Any], source: str = "") -> EvalResults:
        benchmarks = [
            BenchmarkResult(
                str(b["name"]),
                str(b.get("kind") or b["name"]),
                int(b.get("num_images", 0)),
                {k: float(v) for k, v in (b.get("metrics") or {}).items()},
                dict(b.get("settings") or {}),
            )
            for b in record["benchmarks"]
        ]
        model, settings = str(record.get("model") or ""), dict(record.get("settings") or {})
        return cls(model, benchmarks, record.get("source") or source, settings)


def from_flat_metrics(metrics: dict[str, float], model: str, source: str) -> EvalResults:
    """``test/<split>/<metric>`` values (``test_metrics.json``) as :class:`EvalResults`."""
    splits: dict[str, BenchmarkResult] = {}
    for name, value in metrics.items():
        key = parse_metric_key(name)
        if key is None or key.stage != "test":
            continue
        result = splits.setdefault(key.split, BenchmarkResult(key.split, key.split, 0))
        if key.metric == "num_images":
            result.num_images = int(value)
        elif key.metric in METRIC_NAMES:
            result.metrics[key.metric] = float(value)
    for result in splits.values():
        if not result.num_images:
            result.metrics = {}
    return EvalResults(model, list(splits.values()), source)


def _same_folder(a: str, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


def read_eval_results(path: str | Path, export: Path | None = None) -> EvalResults:
    """The results in ``path`` (a file or folder, see the module docstring).

    Args:
        path: results file, or a folder holding one of :data:`SEARCHED`.
        export: the model the results are for; picks the recipe ``results.json`` entry of this
            export.

    Raises:
        MissingPathError: no results file at ``path``.
        ConfigError: a file that is none of the accepted formats, or a recipe ``results.json``
            without an entry for ``export``.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in SEARCHED if (path / name).is_file()]
        if not found:
            raise MissingPathError(
                f"no evaluation results in {path}: expected one of {', '.join(SEARCHED)} "
                "(written by dm-lightning test with the EvaluationReport callback, or the recipe)"
            )
        path = found[0]
    elif not path.is_file():
        raise MissingPathError(f"evaluation results {path} not found")
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"evaluation results {path}: not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise ConfigError(f"evaluation results {path}: expected a JSON object")
    if isinstance(record.get("benchmarks"), list):  # EvaluationReport (or a card's own copy)
        return EvalResults.from_json(record, str(path))
    if any(is_stage_key(str(k), "test") for k in record):  # TestMetricsWriter
        return from_flat_metrics(record, "", str(path))
    entries = {k: v for k, v in record.items() if isinstance(v, dict) and "metrics" in v}
    if not entries:
        raise ConfigError(
            f"evaluation results {path}: not an EvaluationReport results.json (benchmarks), a "
            "test_metrics.json (test/<split>/<metric>) or a recipe results.json"
        )
    chosen = [
        v
        for v in entries.values()
        if export is not None and _same_folder(v.get("model", ""), export)
    ]
    if not chosen:
        models = ", ".join(f"{k}: {v.get('model')}" for k, v in entries.items())
        raise ConfigError(
            f"recipe results {path} hold no results of {export} (they are of {models})"
        )
    return from_flat_metrics(chosen[0]["metrics"], str(chosen[0]["model"]), str(path))


def check_results_model(results: EvalResults, export: Path, force: bool = False) -> None:
    """Refuse results recorded for another model folder than ``export`` (unless ``force``):
    a card must not show another model's numbers. Results that name no model, or a hub id,
    pass."""
    model = results.model
    if force or not model or model.startswith("hf://") or not Path(model).expanduser().exists():
        return
    if not _same_folder(model, Path(export)):
        raise ConfigError(
            f"evaluation results {results.source} are of model {model}, not of {export}; "
            "pass --force if that folder holds the same weights"
        )
