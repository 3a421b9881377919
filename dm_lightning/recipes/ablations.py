"""Ablation sweeps: the recipe once as a baseline and once per overlay, one table, one chart.

    python tools/run_ablations.py --stage1 configs/stage1.yaml --stage2 configs/stage2.yaml \\
        --data configs/data/hypersim_vkitti.yaml --run runs/ablations \\
        --overlays configs/ablations/no_fa.yaml configs/encoders/clip_vitl14.yaml \\
                   configs/ablations/stage2_no_gradient_loss.yaml

The recipe is one stage (``--stage1`` or ``--stage2`` alone) or both. Each row is a whole
recipe run (:mod:`dm_lightning.recipes.pipeline`) in ``<run>/<row>/``: the baseline without overlay,
then one row per overlay, the overlay added as one more ``--config`` after the stage files of
the stages it belongs to. An overlay belongs to the stages whose model class takes every
``model.init_args`` key it sets (``encoder`` -> stage 1, ``gradient_weight`` -> stage 2,
``target`` -> both); ``stage2=FILE`` names the stage explicitly. Each row's final export is
tested on the data config's test splits, and the sweep writes, in ``<run>/``:

* ``ablations.md``: rows = baseline and ablations, columns = AbsRel and δ1 (x100) per test
  split, like the paper's Tables III-VI;
* ``ablations.png``: grouped bars of AbsRel and δ1 per test split and row;
* ``ablations.json``: per row its overlay, stages, run folder and every logged test metric.

A baseline config given as an overlay (``configs/baselines/*.yaml``, whose model is a
:class:`~dm_lightning.baselines.task.BaselineTask`: E2E-FT, Lotus-D, Marigold) is a row of
that method alone: one stage from ``--model-path`` on the same data, schedule and test, so the
single-step family lands in the same table as DepthMaster.

Rows run one after another; re-running the same command skips finished rows and resumes an
interrupted one. ``--print-commands`` prints one ``tools/train_depthmaster.py`` command per row
instead (for a cluster); once those jobs have run, the same options plus ``--collect`` write the
table and the chart from the rows' results without training anything (a row not finished yet
is shown as missing; a plain re-run would train it here).
"""

from __future__ import annotations

import importlib
import inspect
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dm_lightning.baselines.task import BaselineTask
from dm_lightning.errors import ConfigError, DMLightningError, MissingPathError
from dm_lightning.evaluation.tables import metric_splits, metrics_table
from dm_lightning.recipes.ablation_chart import write_chart
from dm_lightning.recipes.pipeline import (
    Pipeline,
    Stage,
    read_results,
    run_pipeline,
)
from dm_lightning.recipes.pipeline_cli import pipeline_command, recipe_from_args, recipe_parser
from dm_lightning.recipes.step_runner import PipelineError
from dm_lightning.recipes.steps import check_pipeline

BASELINE = "baseline"
TABLE, CHART, RECORD = "ablations.md", "ablations.png", "ablations.json"


def log(message: str) -> None:
    print(f"[ablations] {message}", flush=True)


@dataclass(frozen=True)
class Row:
    """One row of the sweep: ``name`` (its folder under the sweep's run folder), the
    ``overlay`` file (None for the baseline), the ``stages`` it was added to, and the
    ``pipeline`` that runs it; a method row (``method``, the task class its config names)
    is that method alone, one stage, instead of the recipe."""

    name: str
    overlay: str | None
    stages: tuple[str, ...]
    pipeline: Pipeline
    method: str | None = None  # the task class of a method row (a baseline config)


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{what} {path}: no such file")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path}: expected a YAML mapping, got {type(loaded).__name__}")
    return loaded


def model_keys(config: dict[str, Any]) -> set[str]:
    """The ``model.init_args`` keys a config sets, nested or dotted (``model.init_args.x``)."""
    model = config.get("model") or {}
    keys = set((model.get("init_args") or {}) if isinstance(model, dict) else ())
    prefix = "model.init_args."
    keys |= {k[len(prefix) :].split(".")[0] for k in config if k.startswith(prefix)}
    return keys


def model_parameters(stage: Stage) -> set[str] | None:
    """The ``__init__`` parameters of the stage's model class (its last ``model.class_path``
    among the stage's configs, and the bases that its ``**kwargs`` reach), or None when no
    config names a class."""
    class_path = None
    for config in stage.configs:
        model = read_yaml(config, f"{stage.name} config").get("model")
        if isinstance(model, dict) and model.get("class_path"):
            class_path = model["class_path"]
    if class_path is None:
        return None
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break  # the bases get nothing more than this signature passes on
    return names - {"self"}


def method_task(path: str | Path) -> str | None:
    """The task class a config names when it is another method of its own (a baseline of
    ``configs/baselines/``: a :class:`~dm_lightning.baselines.task.BaselineTask`), else None."""
    model = read_yaml(path, "overlay").get("model")
    class_path = model.get("class_path") if isinstance(model, dict) else None
    if not isinstance(class_path, str) or "." not in class_path:
        return None

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"overlay {path}: model.class_path {class_path!r}: {err}") from err
    return class_path if isinstance(cls, type) and issubclass(cls, BaselineTask) else None


def method_row(recipe: Pipeline, run: Path, name: str, path: str, task: str) -> Row:
    """The row of a baseline config: that method alone, trained from the recipe's model path
    with the sweep's fit options (not the recipe stages' own), its export tested as the
    others. Its one stage is ``stage1`` (the first stage), so the printed
    ``tools/train_depthmaster.py`` command runs it as ``--stage1 <config>``."""
    stage = Stage("stage1", (path,))
    pipeline = replace(recipe, stages=(stage,), run=str(run), test=(stage.name,))
    return Row(name, path, (stage.name,), pipeline, method=task)


def overlay_stages(spec: str, stages: Sequence[Stage]) -> tuple[str, tuple[str, ...]]:
    """Split ``[STAGE=]FILE`` into the file and the names of the stages it is added to.

    Raises:
        MissingPathError: the file does not exist.
        ConfigError: an unknown stage, no stage taking the overlay's keys, or a non-first
            stage given a ``model_path`` (a one-stage ablation needs a one-stage recipe).
    """
    names = [s.name for s in stages]
    stage_name, sep, path = spec.partition("=")
    if not sep:
        stage_name, path = "", spec
    keys = model_keys(read_yaml(path, "overlay"))
    if stage_name:
        if stage_name not in names:
            raise ConfigError(f"overlay {spec}: no stage {stage_name!r} in the recipe ({names})")
        chosen = [stage_name]
    else:
        chosen = []
        for stage in stages:
            params = model_parameters(stage)
            if params is None or keys <= params:
                chosen.append(stage.name)
        if not chosen:
            raise ConfigError(
                f"overlay {path}: no stage of the recipe takes its model.init_args keys "
                f"{sorted(keys)}; name the stage as STAGE={path}"
            )
    if "model_path" in keys and chosen != names[:1]:
        raise ConfigError(
            f"overlay {path} sets model_path, which only the first stage takes (later stages "
            f"start from the previous export); run it with a one-stage recipe"
        )
    return path, tuple(chosen)


def plan_rows(
    recipe: Pipeline, overlays: Sequence[str], run: str | Path, baseline: bool = True
) -> list[Row]:
    """The sweep's rows: the baseline (``baseline=True``) then one per overlay spec, each a
    copy of ``recipe`` writing to ``<run>/<row name>`` and testing its last stage.

    Raises:
        ConfigError: two overlays with the same file name and folder, or see
            :func:`overlay_stages`.
    """
    run = Path(run)
    rows = []
    if baseline:
        rows.append(Row(BASELINE, None, (), row_pipeline(recipe, run / BASELINE, None, ())))
    names = {BASELINE} if baseline else set()
    for spec in overlays:
        task = None if "=" in spec else method_task(spec)
        path, stages = (spec, ()) if task else overlay_stages(spec, recipe.stages)
        name = Path(path).stem
        if name in names:  # configs/ablations/x.yaml and configs/encoders/x.yaml
            name = f"{Path(path).parent.name}-{name}"
        if name in names:
            raise ConfigError(f"overlay {path}: a row named {name} exists already")
        names.add(name)
        if task:
            rows.append(method_row(recipe, run / name, name, path, task))
        else:
            rows.append(Row(name, path, stages, row_pipeline(recipe, run / name, path, stages)))
    return rows


def row_pipeline(recipe: Pipeline, run: Path, overlay: str | None, stages: tuple[str, ...]):
    new_stages = tuple(
        replace(s, configs=(*s.configs, overlay)) if s.name in stages else s for s in recipe.stages
    )
    return replace(recipe, stages=new_stages, run=str(run), test=(recipe.stages[-1].name,))


def row_label(row: Row) -> str:
    if row.method:
        return f"{row.name} ({row.method.rpartition('.')[2]})"
    return row.name if row.overlay is None else f"{row.name} ({', '.join(row.stages)})"


def run_rows(rows: Sequence[Row]) -> dict[str, dict[str, float] | None]:
    """Run the rows one after another; returns row name -> test metrics of its final model,
    None for a row that failed (the sweep goes on with the next). A row stopped by a signal
    (exit status > 128) or Ctrl-C stops the sweep: re-running it resumes there."""
    results: dict[str, dict[str, float] | None] = {}
    for index, row in enumerate(rows, 1):
        where = f"with {row.overlay} in {', '.join(row.stages)}" if row.overlay else "no overlay"
        where = f"{row.method} alone" if row.method else where
        log(f"row {index}/{len(rows)}: {row.name} ({where}) in {row.pipeline.run}")
        try:
            metrics = run_pipeline(row.pipeline, title=f"Ablation {row.name}")
        except PipelineError as err:
            if err.status > 128:  # stopped by a signal (pre-emption): stop the sweep too
                raise
            log(f"row {row.name} failed: {err}; the sweep goes on")
            results[row.name] = None
            continue
        results[row.name] = metrics[row.pipeline.tested[-1]]
    return results


def collect_rows(rows: Sequence[Row]) -> dict[str, dict[str, float] | None]:
    """What :func:`run_rows` returns, read from the rows' ``results.json`` without running
    anything: the test metrics of each row's final model, None where it has none yet."""
    results: dict[str, dict[str, float] | None] = {}
    for row in rows:
        entry = read_results(Path(row.pipeline.run)).get(row.pipeline.tested[-1])
        results[row.name] = entry["metrics"] if entry else None
        if entry is None:
            log(f"row {row.name}: no results yet in {row.pipeline.run}")
    return results


def write_report(
    run: Path, rows: Sequence[Row], results: dict[str, dict[str, float] | None]
) -> str:
    """Write ``ablations.md``, ``ablations.png`` and ``ablations.json`` in ``run``; returns
    the table."""
    run.mkdir(parents=True, exist_ok=True)
    splits = metric_splits({k: v for k, v in results.items() if v is not None})
    table = metrics_table({row_label(r): results.get(r.name) for r in rows}, splits)
    recipe = rows[0].pipeline
    (run / TABLE).write_text(
        f"# Ablations in {run.name}\n\nAbsRel and δ1 (x100) of each row's final model on the "
        f"test splits of `{recipe.test_data or recipe.data}`; a row is the recipe plus one "
        "overlay, added to the stages in brackets, or another method alone (its task class in "
        "brackets: the same data, schedule and test); `–`: no result (failed or not run yet)."
        f"\n\n{table}\n"
    )
    write_chart(run / CHART, results, splits)
    record = {
        r.name: {
            "overlay": r.overlay,
            "stages": list(r.stages),
            "method": r.method,
            "run": r.pipeline.run,
            "metrics": results.get(r.name),
        }
        for r in rows
    }
    (run / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/run_ablations.py``; returns the exit status (1 if a row
    failed, 2 for a usage error)."""
    parser = recipe_parser(
        "run_ablations.py",
        __doc__,
        "Other options are dm-lightning options for every row, as in "
        "train_depthmaster.py: --KEY VALUE for every fit, --stage1.KEY VALUE / --stage2.KEY "
        "VALUE for one stage, --test.KEY VALUE for the tests.",
        run_help="the sweep's run folder (runs/ablations)",
    )
    parser.add_argument(
        "--overlays",
        nargs="+",
        default=[],
        metavar="[STAGE=]FILE",
        help="ablation overlays (configs/ablations/*.yaml, configs/encoders/*.yaml), one row "
        "each; a baseline config (configs/baselines/*.yaml) is a row of that method alone",
    )
    parser.add_argument("--no-baseline", action="store_true", help="no row without overlay")
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print one tools/train_depthmaster.py command per row instead of running them",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="write the table and chart from the rows' results (after running the printed "
        "commands elsewhere) without training anything",
    )
    args, rest = parser.parse_known_args(argv)
    try:
        recipe = recipe_from_args(args, rest, args.run)
        rows = plan_rows(recipe, args.overlays, args.run, baseline=not args.no_baseline)
        if not rows:
            raise ConfigError("nothing to run: no overlay and --no-baseline")
        if not (args.print_commands or args.collect):
            for row in rows:  # every row's options, before the first row trains
                check_pipeline(row.pipeline)
    except DMLightningError as err:  # a missing overlay, an overlay no stage takes, ...
        print(f"run_ablations.py: error: {err}", file=sys.stderr)
        return 2
    if args.print_commands:
        for row in rows:
            print(shlex.join(pipeline_command(row.pipeline)))
        return 0
    try:
        results = collect_rows(rows) if args.collect else run_rows(rows)
    except KeyboardInterrupt:
        print(
            "run_ablations.py: interrupted; run the same command again to resume", file=sys.stderr
        )
        return 130
    except PipelineError as err:  # a row stopped by a signal: the sweep stops with it
        print(
            f"run_ablations.py: error: {err}; run the same command again to resume", file=sys.stderr
        )
        return err.status
    table = write_report(Path(args.run), rows, results)
    log(f"table {Path(args.run) / TABLE}, chart {Path(args.run) / CHART}\n\n{table}\n")
    failed = [name for name, metrics in results.items() if metrics is None]
    if failed and args.collect:
        print(
            f"run_ablations.py: error: rows without results yet: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    if failed:
        print(
            f"run_ablations.py: error: rows failed: {', '.join(failed)} (see their messages "
            "above); run the same command again to retry them, finished rows are skipped",
            file=sys.stderr,
        )
        return 1
    return 0
