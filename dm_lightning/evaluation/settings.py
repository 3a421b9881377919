"""The settings that produced an evaluation's numbers, recorded with them.

Published depth numbers differ by settings nobody wrote down (the benchmark list, processing
resolution, fit space, crop, mask). :class:`~dm_lightning.evaluation.report.EvaluationReport`
therefore stores, in ``results.json``, a run's ``settings`` (dm_lightning's version and what
the task reports: the model or prediction folder, the fit space, ...) and each benchmark's
(:func:`split_settings`: its reader's list, crop, mask and depth range, and the processing
resolution), and prints them under the table of ``results.md`` (:func:`settings_markdown`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from dm_lightning.data.benchmarks import BenchmarkSpec
from dm_lightning.data.contract import depth_data
from dm_lightning.evaluation.tables import MISSING, markdown_table


def dm_lightning_version() -> str:
    """The installed dm_lightning's version (``pyproject.toml``), or "unknown"."""
    try:
        return version("dm_lightning")
    except PackageNotFoundError:
        return "unknown"


def split_settings(datamodule: Any, stage: str, name: str) -> dict[str, Any]:
    """What split ``name`` of ``stage`` ("val" or "test") evaluates: a benchmark's reader
    settings (:meth:`~dm_lightning.data.benchmarks.DepthPairDataset.settings`: list file and
    sha256, images, crop, mask, depth range) or a shard split's ``shards`` pattern; empty
    without a DataModule that knows the split."""
    data = depth_data(datamodule)
    entry = data.eval_splits(stage).get(name) if data else None
    if isinstance(entry, BenchmarkSpec):
        return data.eval_dataset(name, stage).settings()
    return {} if entry is None else {"shards": str(entry)}


def _cell(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value).replace("|", "\\|")


def _list_cell(settings: dict[str, Any]) -> str:
    if "shards" in settings:
        return f"shards `{settings['shards']}`"
    if "list_file" in settings:
        return f"`{Path(settings['list_file']).name}` (sha256 {settings['list_sha256'][:12]})"
    return _cell(settings.get("layout"))


def _range_cell(settings: dict[str, Any]) -> str:
    bounds = settings.get("depth_range")
    if not bounds:
        return MISSING
    low, high = ("∞" if b is None else f"{b:g}" for b in bounds)
    return f"{low} .. {high}"


def settings_markdown(run: dict[str, Any], splits: dict[str, dict[str, Any]]) -> str:
    """The settings under ``results.md``'s table: a line of the run's (``run``: version, fit
    space, what was evaluated) and a table of each split's (``splits``: name -> settings,
    ``processing_res`` included).

    Args:
        run: the ``settings`` of ``results.json``.
        splits: split name -> the ``settings`` of its ``results.json`` entry.
    """
    words = [f"dm_lightning {run.get('dm_lightning', 'unknown')}"]
    if "predictions" in run:
        words.append(f"predictions `{run['predictions']}` in {run['prediction_space']} space")
    if "model" in run:
        words.append(f"model `{run['model']}` (target {run.get('target', MISSING)})")
    words.append(f"fit (alignment) space **{run.get('fit_space', MISSING)}**")
    header = ["benchmark", "list", "images", "processing res", "crop", "mask", "depth range (m)"]
    rows = (
        [
            name,
            _list_cell(s),
            *(_cell(s.get(key)) for key in ("images", "processing_res", "crop", "mask")),
            _range_cell(s),
        ]
        for name, s in splits.items()
    )
    lines = ["Settings: " + "; ".join(words) + ".", "", *markdown_table(header, rows)]
    return "\n".join(lines) + "\n"
