"""Evaluation report: per-image CSVs and a paper-style results table after ``test``."""

from __future__ import annotations

import csv
import json

import lightning as L

from dm_lightning.data.datamodule import BenchmarkDataModule
from dm_lightning.evaluation.metrics import METRIC_NAMES
from dm_lightning.evaluation.settings import (
    MISSING,
    dm_lightning_version,
    settings_markdown,
    split_settings,
)
from dm_lightning.evaluation.task import EvaluationTask
from dm_lightning.output_folders import check_writable_folder, output_folder

PAPER_RESULTS: dict[str, dict[str, tuple[float, float]]] = {
    "DepthMaster (paper)": {
        "kitti": (8.2, 93.7),
        "nyu": (5.0, 97.2),
        "eth3d": (5.3, 97.4),
        "scannet": (5.5, 96.7),
        "diode": (21.5, 77.6),
    },
    "Marigold (paper)": {
        "kitti": (9.9, 91.6),
        "nyu": (5.5, 96.4),
        "eth3d": (6.5, 96.0),
        "scannet": (6.4, 95.1),
        "diode": (30.8, 77.3),
    },
    "Lotus (paper)": {
        "kitti": (9.3, 92.8),
        "nyu": (5.3, 96.7),
        "eth3d": (6.8, 95.3),
        "scannet": (6.0, 96.3),
        "diode": (22.8, 73.8),
    },
}
"""Published zero-shot results (docs/method.md §6): method -> benchmark kind -> (AbsRel, delta1),
both x100."""

RESULTS_JSON = "results.json"
PAPER_ROWS_NOTE = (
    "The (paper) rows are the published numbers (docs/method.md §6), made with their authors' "
    "own settings; the settings above are the first row's."
)


def results_table(
    ours: dict[str, tuple[float, float] | None], kinds: dict[str, str], num_images: dict[str, int]
) -> str:
    """A markdown table: "this model" then the :data:`PAPER_RESULTS` rows.

    Args:
        ours: benchmark name -> (AbsRel, delta1) as fractions in [0, inf) and [0, 1], or None
            (no image evaluated).
        kinds: benchmark name -> benchmark kind (``nyu``, ... ; anything else has no paper
            number).
        num_images: benchmark name -> number of evaluated images, shown in the header.

    Returns:
        The table; cells are ``AbsRel / delta1`` x100 with one decimal, ``–`` where unknown.
    """

    def cell(value: tuple[float, float] | None, scale: float) -> str:
        return MISSING if value is None else f"{value[0] * scale:.1f} / {value[1] * scale:.1f}"

    names = list(ours)
    lines = [
        "| AbsRel / δ1 (x100) | " + " | ".join(f"{n} ({num_images[n]})" for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
        "| this model | " + " | ".join(cell(ours[n], 100.0) for n in names) + " |",
    ]
    for method, numbers in PAPER_RESULTS.items():
        cells = (cell(numbers.get(kinds[n]), 1.0) for n in names)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def metric_splits(rows: dict[str, dict[str, float]]) -> list[str]:
    """The test splits of ``test/<split>/abs_rel`` keys in ``rows``' metrics, first seen first."""
    splits: dict[str, None] = {}
    for metrics in rows.values():
        for key in metrics:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "test" and parts[2] == "abs_rel":
                splits[parts[1]] = None
    return list(splits)


def metrics_table(rows: dict[str, dict[str, float] | None], splits: list[str]) -> str:
    """A markdown table of models or ablations (rows) by test split: ``<split> AbsRel`` and
    ``<split> δ1`` columns, x100 with one decimal, like the paper's ablation tables.

    Args:
        rows: row label -> logged metrics (``test/<split>/abs_rel`` and ``test/<split>/delta1``
            as fractions), or None for a row without results (shown as ``–``).
        splits: the test splits, in column order.
    """
    columns = [f"{s} {name}" for s in splits for name in ("AbsRel", "δ1")]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [line(["model", *columns]), "|" + "---|" * (1 + len(columns))]
    for label, metrics in rows.items():
        cells = [
            MISSING
            if metrics is None or f"test/{s}/{m}" not in metrics
            else f"{100 * metrics[f'test/{s}/{m}']:.1f}"
            for s in splits
            for m in ("abs_rel", "delta1")
        ]
        lines.append(line([label, *cells]))
    return "\n".join(lines)


class EvaluationReport(L.Callback):
    """After ``test``, write per-image metrics and a results table next to the paper's.

    Writes, on global rank 0, to ``output_dir``:

    - ``per_image_<name>.csv`` per test split: ``key`` and the 8 metrics (fractions, not x100;
      images without a valid pixel are left out, as in the logged means), sorted by key;
    - ``results.md``: AbsRel and delta1 (x100) of this model per split, next to the published
      DepthMaster, Marigold and Lotus numbers (docs/method.md §6) for benchmarks that have them,
      and under the table the settings that produced them
      (:func:`~dm_lightning.evaluation.settings.settings_markdown`);
    - ``results.json``: the same numbers for programs (the model card,
      :mod:`dm_lightning.hub.eval_results`): ``model`` (the evaluated ``model_path``, or the
      prediction folder), ``settings`` (``dm_lightning``: the version, and the task's
      :meth:`~dm_lightning.evaluation.task.EvaluationTask.evaluation_settings`: fit space,
      model and target or prediction folder and space) and ``benchmarks``, a list of ``name``,
      ``kind``, ``num_images``, ``metrics`` (the 8 metrics as fractions, as logged; empty for
      a split without an evaluated image) and ``settings`` (``processing_res``, and the
      reader's list file and sha256, images, crop, mask and depth range:
      :func:`~dm_lightning.evaluation.settings.split_settings`).

    The folder is printed. Splits are matched to paper columns by their ``kind`` in a
    :class:`~dm_lightning.data.datamodule.BenchmarkDataModule`, else by their name.

    Args:
        output_dir: report folder; default ``<trainer.log_dir>/evaluation``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.folder = output_folder(trainer, self.output_dir, "evaluation")
        if stage == "test":
            check_writable_folder(self.folder, "evaluation report folder")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not isinstance(pl_module, EvaluationTask):
            raise TypeError(
                f"EvaluationReport needs an EvaluationTask such as DepthMasterTask or "
                f"PredictionFolder (per_image_results); got {type(pl_module).__name__}"
            )
        results = pl_module.per_image_results
        out = self.folder
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in results.items():
            with open(out / f"per_image_{name}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["key", *METRIC_NAMES])
                writer.writeheader()
                writer.writerows(rows)
        metrics = trainer.callback_metrics
        num_images = {n: int(metrics[f"test/{n}/num_images"]) for n in results}
        ours = {
            n: (float(metrics[f"test/{n}/abs_rel"]), float(metrics[f"test/{n}/delta1"]))
            if num_images[n]
            else None
            for n in results
        }
        datamodule = trainer.datamodule
        specs = datamodule.benchmarks if isinstance(datamodule, BenchmarkDataModule) else {}
        kinds = {n: specs[n].kind if n in specs else n for n in results}
        table = results_table(ours, kinds, num_images)
        settings = {"dm_lightning": dm_lightning_version(), **pl_module.evaluation_settings("test")}
        resolutions = settings.pop("processing_res", {})
        splits = {
            n: {"processing_res": resolutions.get(n), **split_settings(datamodule, "test", n)}
            for n in results
        }
        if "predictions" in settings:
            model = settings["predictions"]
            what = f"Predictions: `{model}` ({settings.get('prediction_space')} space)"
        else:
            model = settings.get("model", pl_module.hparams.get("model_path", ""))
            what = f"Model: `{model}`"
        (out / "results.md").write_text(
            f"# Zero-shot evaluation\n\n{what}. Columns: benchmark (images).\n\n{table}\n"
            f"{settings_markdown(settings, splits)}\n{PAPER_ROWS_NOTE}\n"
        )
        benchmarks = [
            {
                "name": n,
                "kind": kinds[n],
                "num_images": num_images[n],
                "metrics": {
                    m: float(metrics[f"test/{n}/{m}"])
                    for m in METRIC_NAMES
                    if num_images[n] and f"test/{n}/{m}" in metrics
                },
                "settings": splits[n],
            }
            for n in results
        ]
        record = {"model": str(model), "settings": settings, "benchmarks": benchmarks}
        (out / RESULTS_JSON).write_text(json.dumps(record, indent=2) + "\n")
        # The terminal's table (datasets as rows) is the CLI's, printed after the test.
        print(f"[dm_lightning] evaluation report (per-image CSVs, results.md) in {out}")
