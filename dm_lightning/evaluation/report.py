"""Evaluation report: per-image CSVs and a paper-style results table after ``test``."""

from __future__ import annotations

import csv
import json

import lightning as L

from dm_lightning.data.datamodule import BenchmarkDataModule
from dm_lightning.evaluation.keys import metric_key
from dm_lightning.evaluation.scoring import METRIC_NAMES
from dm_lightning.evaluation.settings import (
    dm_lightning_version,
    settings_markdown,
    split_settings,
)
from dm_lightning.evaluation.tables import results_table
from dm_lightning.evaluation.task import EvaluationTask
from dm_lightning.output_folders import check_writable_folder, output_folder

RESULTS_JSON = "results.json"
PAPER_ROWS_NOTE = (
    "The (paper) rows are the published numbers (docs/method.md §6), made with their authors' "
    "own settings; the settings above are the first row's."
)


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
        logged, names = trainer.callback_metrics, (*METRIC_NAMES, "num_images")
        # split -> metric -> logged value
        values = {
            n: {m: float(logged[k]) for m in names if (k := metric_key("test", n, m)) in logged}
            for n in results
        }
        num_images = {n: int(values[n]["num_images"]) for n in results}
        ours = {
            n: (values[n]["abs_rel"], values[n]["delta1"]) if num_images[n] else None
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
                    m: values[n][m] for m in METRIC_NAMES if num_images[n] and m in values[n]
                },
                "settings": splits[n],
            }
            for n in results
        ]
        record = {"model": str(model), "settings": settings, "benchmarks": benchmarks}
        (out / RESULTS_JSON).write_text(json.dumps(record, indent=2) + "\n")
        # The terminal's table (datasets as rows) is the CLI's, printed after the test.
        print(f"[dm_lightning] evaluation report (per-image CSVs, results.md) in {out}")
