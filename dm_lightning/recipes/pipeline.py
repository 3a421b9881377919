"""The whole recipe in one command: stage 1, stage 2 from its export, test, in one run folder.

    python tools/train_depthmaster.py --stage1 configs/stage1.yaml --stage2 configs/stage2.yaml \\
        --data configs/data/hypersim_vkitti.yaml --run runs/recipe

Each stage is the ``dm-lightning fit`` a user would run by hand (a child process; in this
process with ``--in-process``), with its logger pointed at ``<run>/<stage>``, so its folder is
``<run>/stage1/version_<n>``; the next stage starts from the export recorded in the previous
one's ``export.json`` through ``--model.init_args.model_path``. Then ``dm-lightning test`` of
the chosen models on the data config's test splits (``<run>/test-<model>/version_<n>``), and
``<run>/results.md`` (AbsRel / δ1 x100 per test split) with ``<run>/results.json`` (every
logged test metric).

Re-running the same command picks up where the last one stopped, from what the run folder holds:

* a stage with a version folder whose ``export.json`` names an existing export is finished:
  skipped, its export handed on;
* a stage with ``checkpoints/last.ckpt`` (or a SLURM ``hpc_ckpt_<n>.ckpt``) and no export was
  interrupted: it resumes with ``--ckpt_path last``, in the same version folder;
* a model whose test results in ``results.json`` belong to the same export (path and step) is
  not tested again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from dm_lightning.errors import ConfigError
from dm_lightning.evaluation.keys import is_stage_key
from dm_lightning.evaluation.tables import metric_splits, metrics_table
from dm_lightning.output_folders import run_dir
from dm_lightning.recipes.step_runner import PipelineError, log, run_dm_lightning
from dm_lightning.recipes.steps import INPUT, check_pipeline, evaluation_arguments, fit_arguments
from dm_lightning.training.callbacks import EXPORT_RECORD
from dm_lightning.training.run_folder import latest_resumable

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
TEST_METRICS = "test_metrics.json"


@dataclass(frozen=True)
class Stage:
    """One ``dm-lightning fit`` of the recipe.

    Attributes:
        name: ``stage1`` / ``stage2``: the logger name, so the stage's folder is
            ``<run>/<name>/version_<n>``.
        configs: its ``--config`` files in order (the stage file, then overlays); the data
            config is added after them.
        args: more ``dm-lightning fit`` arguments for this stage only
            (``["--trainer.max_steps", "2"]``).
    """

    name: str
    configs: tuple[str, ...]
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    """A recipe run: the stages in order, their data, and what to test.

    Attributes:
        stages: trained in order; each after the first starts from the previous export.
        data: the data config (``--config`` after every stage's and the test's configs).
        run: the run folder holding everything.
        eval_config: the ``dm-lightning test`` config (trainer, logger, report callbacks).
        model_path: the first stage's model folder; None keeps its config's ``model_path``.
        fit_args: ``dm-lightning fit`` arguments for every stage (``--trainer.devices 4``).
        test_args: ``dm-lightning test`` arguments.
        test: the models to test, by name: a stage's name (its export) or ``input`` (the
            model the first stage starts from); default: the last stage.
        in_process: run the ``dm-lightning`` steps in this process instead of child
            processes (see :func:`run_dm_lightning`).
        test_data: the data config of the tests (``configs/eval/benchmarks.yaml``); default
            ``data`` (its test splits).
    """

    stages: tuple[Stage, ...]
    data: str
    run: str
    eval_config: str = "configs/eval/depthmaster.yaml"
    model_path: str | None = None
    fit_args: tuple[str, ...] = ()
    test_args: tuple[str, ...] = ()
    test: tuple[str, ...] = field(default=())
    in_process: bool = False
    test_data: str | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if not names:
            raise ConfigError("a pipeline needs at least one stage (--stage1 and/or --stage2)")
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names repeat: {names}")
        unknown = [t for t in self.test if t not in (INPUT, *names)]
        if unknown:
            raise ConfigError(f"--test {unknown}: expected {INPUT} or a stage ({', '.join(names)})")

    @property
    def tested(self) -> tuple[str, ...]:
        return self.test or (self.stages[-1].name,)


class TestMetricsWriter(L.Callback):
    """After ``test``, write every logged ``test/...`` metric (floats) to ``path``, default
    ``<run dir>/test_metrics.json``: the numbers the pipeline and the ablation tables read."""

    __test__ = False  # a callback, not a pytest test class

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return

        path = Path(self.path) if self.path else run_dir(trainer) / TEST_METRICS
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if is_stage_key(k, "test")
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def finished_export(stage_folder: Path) -> dict | None:
    """The newest ``export.json`` record under ``stage_folder/<version>/`` whose export folder
    exists, with its ``run`` folder added; None if no version finished."""
    records = []
    for path in stage_folder.glob(f"*/{EXPORT_RECORD}"):
        record = json.loads(path.read_text())
        if Path(record.get("export", "")).is_dir():
            records.append((path.stat().st_mtime, {**record, "run": str(path.parent)}))
    return max(records, key=lambda item: item[0])[1] if records else None


def stage_state(run: Path, stage: str) -> tuple[str, dict | Path | None]:
    """``("finished", export record)``, ``("interrupted", resumable checkpoint)`` or
    ``("new", None)`` for ``<run>/<stage>``."""
    folder = run / stage
    record = finished_export(folder)
    if record is not None:
        return "finished", record
    checkpoint = latest_resumable(folder)
    if checkpoint is not None:
        return "interrupted", checkpoint
    return "new", None


def recorded_model_path(version: Path) -> str | None:
    """The ``model.init_args.model_path`` a run was started with (its saved ``config.yaml``),
    or None."""
    import yaml

    config = version / "config.yaml"
    if not config.is_file():
        return None
    model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
    return (model.get("init_args") or {}).get("model_path")


def fit_stage(pipeline: Pipeline, stage: Stage, model_path: str | None) -> dict:
    """Train ``stage`` (or skip / resume it, see the module docstring); returns its export
    record (``export``, ``global_step``, ``run``)."""
    run = Path(pipeline.run)
    state, found = stage_state(run, stage.name)
    if state == "finished":
        log(f"{stage.name}: finished earlier, skipping; export {found['export']}")
        trained_from = recorded_model_path(Path(found["run"]))
        if model_path is not None and trained_from not in (None, str(model_path)):
            log(
                f"{stage.name}: note: it was trained from {trained_from}, not from {model_path}; "
                f"remove {run / stage.name} to train it again from {model_path}"
            )
        return found
    resume = ["--ckpt_path", "last"] if state == "interrupted" else []
    if state == "interrupted":
        log(f"{stage.name}: interrupted earlier, resuming from {found}")
    else:
        log(f"{stage.name}: training into {run / stage.name}")
    args = fit_arguments(pipeline, stage, model_path, resume)
    run_dm_lightning(args, f"{stage.name} (fit)", pipeline.in_process)
    record = finished_export(run / stage.name)
    if record is None:
        raise PipelineError(f"{stage.name} (fit) ended without an export in {run / stage.name}", 1)
    log(f"{stage.name}: done, export {record['export']}")
    return record


def evaluate(pipeline: Pipeline, name: str, model: str, step: int | None) -> dict[str, float]:
    """Test ``model`` on the data config's test splits as ``<run>/test-<name>``, unless
    ``results.json`` already holds this model's results; returns its ``test/...`` metrics."""
    run = Path(pipeline.run)
    done = read_results(run).get(name)
    if done is not None and done["model"] == str(model) and done["global_step"] == step:
        log(f"test of {name}: done earlier, skipping")
        return done["metrics"]
    log(f"test of {name}: {model}")
    test_folder = run / f"test-{name}"
    before = {p: p.stat().st_mtime for p in test_folder.glob(f"*/{TEST_METRICS}")}
    args = evaluation_arguments(pipeline, name, model)
    run_dm_lightning(args, f"test of {name}", pipeline.in_process)
    written = [
        p for p in test_folder.glob(f"*/{TEST_METRICS}") if before.get(p) != p.stat().st_mtime
    ]
    if not written:
        raise PipelineError(f"test of {name} wrote no {TEST_METRICS} under {test_folder}", 1)
    metrics = json.loads(written[0].read_text())
    results = read_results(run)
    results[name] = {
        "model": str(model),
        "global_step": step,
        "test_run": str(written[0].parent),
        "metrics": metrics,
    }
    (run / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    return metrics


def read_results(run: Path) -> dict[str, Any]:
    """``<run>/results.json``: model name -> ``model``, ``global_step``, ``test_run``,
    ``metrics`` (``test/<split>/<metric>`` -> value, fractions); empty if absent."""
    path = Path(run) / RESULTS_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


def run_pipeline(
    pipeline: Pipeline, title: str | None = None, labels: dict[str, str] | None = None
) -> dict[str, dict[str, float]]:
    """Train the stages, test the chosen models, write ``results.md`` / ``results.json``.

    Args:
        pipeline: what to run.
        title: the heading of ``results.md`` (default ``Results of <run folder name>``).
        labels: row labels of the results table by model name (default the names).

    Returns:
        Tested model name -> its ``test/...`` metrics (fractions), in ``pipeline.tested``
        order.

    Raises:
        PipelineError: a stage or a test failed (the message names it, ``status`` is its exit
            status); finished stages are kept, so the same call goes on from there.
        DMLightningError: a config file or a step's options are wrong
            (:func:`~dm_lightning.recipes.steps.check_pipeline`), before anything ran.
    """
    input_model = check_pipeline(pipeline)  # every step's options, before any trains
    run = Path(pipeline.run)
    run.mkdir(parents=True, exist_ok=True)
    log(f"run folder {run.resolve()}  (tensorboard --logdir {run})")
    models: dict[str, tuple[str | None, int | None]] = {INPUT: (input_model, None)}
    model_path = pipeline.model_path
    for stage in pipeline.stages:
        record = fit_stage(pipeline, stage, model_path)
        model_path = record["export"]
        models[stage.name] = (model_path, record.get("global_step"))
    results = {}
    for name in pipeline.tested:
        model, step = models[name]
        if model is None:
            raise PipelineError(f"--test {INPUT}: give the input model with --model-path", 2)
        results[name] = evaluate(pipeline, name, model, step)
    labels = labels or {}
    rows = {labels.get(name, name): metrics for name, metrics in results.items()}
    table = metrics_table(rows, metric_splits(results))
    (run / RESULTS_MD).write_text(
        f"# {title or f'Results of {run.name}'}\n\nAbsRel and δ1 (x100) on the test splits of "
        f"`{pipeline.test_data or pipeline.data}`, per model.\n\n{table}\n"
    )
    log(f"results in {run / RESULTS_MD}\n\n{table}\n")
    return results


__all__ = [
    "INPUT",
    "Pipeline",
    "PipelineError",
    "Stage",
    "TestMetricsWriter",
    "read_results",
    "run_pipeline",
]
