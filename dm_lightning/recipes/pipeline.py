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

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from dm_lightning.errors import ConfigError, DMLightningError
from dm_lightning.evaluation.tables import metric_splits, metrics_table
from dm_lightning.recipes.steps import INPUT, check_pipeline, evaluation_arguments, fit_arguments
from dm_lightning.tool_cli import tool_parser
from dm_lightning.training.callbacks import EXPORT_RECORD
from dm_lightning.training.run_folder import latest_resumable

"""Name of the model the first stage starts from, as a model to test (the untrained row)."""
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
TEST_METRICS = "test_metrics.json"
TOOL = "tools/train_depthmaster.py"


def log(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


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


class PipelineError(RuntimeError):
    """A step of the pipeline failed; ``status`` is its exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TestMetricsWriter(L.Callback):
    """After ``test``, write every logged ``test/...`` metric (floats) to ``path``, default
    ``<run dir>/test_metrics.json``: the numbers the pipeline and the ablation tables read."""

    __test__ = False  # a callback, not a pytest test class

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from dm_lightning.output_folders import run_dir

        path = Path(self.path) if self.path else run_dir(trainer) / TEST_METRICS
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")
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


def run_dm_lightning(args: list[str], what: str, in_process: bool = False) -> None:
    """Run ``dm-lightning <args>``; raises :class:`PipelineError` naming ``what`` on a non-zero
    exit status.

    By default in a child process (``python -m dm_lightning``), so that each stage launches
    its own DDP ranks as ``dm-lightning fit`` does and starts from a clean process; SIGTERM
    and SIGUSR1 sent to this process are forwarded to it, and Ctrl-C reaches it through the
    terminal (it saves ``last.ckpt``). ``in_process`` calls :func:`dm_lightning.cli.main`
    here instead: no start-up cost per step (the CPU demo, tests), but unfit for a
    multi-device run that Lightning launches itself, which re-executes this process's
    command line on every rank.
    """
    log("dm-lightning " + shlex.join(args))
    started = time.monotonic()
    status = run_in_process(args) if in_process else run_child(args)
    if status:
        raise PipelineError(f"{what} failed (exit status {status})", status)
    log(f"{what}: finished in {time.monotonic() - started:.0f} s")


def run_in_process(args: list[str]) -> int:
    from dm_lightning.cli import main

    try:
        with warnings.catch_warnings():
            # LightningCLI warns when given args while sys.argv holds this tool's own options.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            return main(args)
    except SystemExit as err:  # argument errors: jsonargparse exits
        return err.code if isinstance(err.code, int) else 2
    except Exception:  # noqa: BLE001 - any crash of the step is reported as that step's failure
        traceback.print_exc()
        return 1


def run_child(args: list[str]) -> int:
    """Run ``python -m dm_lightning ARGS`` and return its exit status, 128 + N when signal N
    killed it (as a shell reports it). SIGTERM / SIGUSR1 are forwarded to the child, which
    saves and exits 143; after a Ctrl-C (which reaches the child too) KeyboardInterrupt is
    raised here once the child has ended, so that a sweep stops instead of going on."""
    sys.stdout.flush()
    child = subprocess.Popen([sys.executable, "-m", "dm_lightning", *args])
    interrupted = False

    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    def note_interrupt(signum: int, frame: object) -> None:
        # Ctrl-C signals the whole foreground group, the child included: only wait for it.
        nonlocal interrupted
        interrupted = True

    handled = [
        signal.SIGTERM,
        signal.SIGINT,
        *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else []),
    ]
    actions = {s: note_interrupt if s == signal.SIGINT else forward for s in handled}
    previous = {s: signal.signal(s, action) for s, action in actions.items()}
    try:
        status = child.wait()
    finally:
        for s, action in previous.items():
            signal.signal(s, action)
    if interrupted:
        raise KeyboardInterrupt
    return 128 - status if status < 0 else status


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


# ----------------------------------------------------------------------------- command line

STAGE_PREFIXES = ("stage1", "stage2", "test")


def split_overrides(rest: Sequence[str]) -> dict[str, list[str]]:
    """Sort pass-through ``dm-lightning`` options by prefix: ``--stage1.KEY V`` ->
    ``stage1: [--KEY, V]``, likewise ``--stage2.`` and ``--test.``; any other ``--KEY [V]``
    goes to ``fit`` (every stage).

    Raises:
        ConfigError: a value with no ``--KEY`` before it.
    """
    groups: dict[str, list[str]] = {"fit": [], **{p: [] for p in STAGE_PREFIXES}}
    current: list[str] | None = None
    for token in rest:
        if token.startswith("--"):
            key = token[2:]
            prefix = key.split(".", 1)[0]
            if prefix in STAGE_PREFIXES and "." in key:
                current = groups[prefix]
                token = "--" + key.split(".", 1)[1]
            else:
                current = groups["fit"]
        elif current is None:
            raise ConfigError(f"argument {token!r}: expected an option --KEY before it")
        current.append(token)
    return groups


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe options shared by ``train_depthmaster.py`` and ``run_ablations.py``."""
    parser.add_argument(
        "--stage1", nargs="+", metavar="CONFIG", help="stage-1 config, then its overlays"
    )
    parser.add_argument(
        "--stage2", nargs="+", metavar="CONFIG", help="stage-2 config, then its overlays"
    )
    parser.add_argument("--data", required=True, metavar="CONFIG", help="data config")
    parser.add_argument(
        "--eval",
        default="configs/eval/depthmaster.yaml",
        metavar="CONFIG",
        help="dm-lightning test config (default %(default)s; configs/tiny/eval.yaml on CPU)",
    )
    parser.add_argument(
        "--test-data",
        default=None,
        metavar="CONFIG",
        help="data config of the tests, e.g. configs/eval/benchmarks.yaml (default: --data)",
    )
    parser.add_argument(
        "--model-path", default=None, help="model folder of the first stage (default: its config's)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the dm-lightning steps in this process (faster start on one CPU/GPU; not "
        "for multi-device runs that Lightning launches itself)",
    )


def recipe_from_args(args: argparse.Namespace, rest: Sequence[str], run: str) -> Pipeline:
    """The :class:`Pipeline` of parsed recipe options and pass-through ``dm-lightning``
    options (see :func:`split_overrides`)."""
    groups = split_overrides(rest)
    stages = tuple(
        Stage(name, tuple(configs), tuple(groups[name]))
        for name, configs in (("stage1", args.stage1), ("stage2", args.stage2))
        if configs
    )
    return Pipeline(
        stages=stages,
        data=args.data,
        run=run,
        eval_config=args.eval,
        model_path=args.model_path,
        fit_args=tuple(groups["fit"]),
        test_args=tuple(groups["test"]),
        test=tuple(getattr(args, "test", None) or ()),
        in_process=args.in_process,
        test_data=args.test_data,
    )


def pipeline_command(pipeline: Pipeline, python: str = "python") -> list[str]:
    """The ``tools/train_depthmaster.py`` command line that runs ``pipeline`` (stages named
    ``stage1`` / ``stage2``)."""
    command = [python, TOOL]
    for stage in pipeline.stages:
        command += [f"--{stage.name}", *stage.configs]
    command += ["--data", pipeline.data, "--eval", pipeline.eval_config, "--run", pipeline.run]
    if pipeline.test_data is not None:
        command += ["--test-data", pipeline.test_data]
    if pipeline.model_path is not None:
        command += ["--model-path", pipeline.model_path]
    if pipeline.test:
        command += ["--test", *pipeline.test]
    if pipeline.in_process:
        command.append("--in-process")
    command += list(pipeline.fit_args)
    for stage in pipeline.stages:
        command += prefixed(stage.name, stage.args)
    return command + prefixed("test", pipeline.test_args)


def prefixed(prefix: str, args: Sequence[str]) -> list[str]:
    """``--KEY`` -> ``--<prefix>.KEY`` (values unchanged): the inverse of
    :func:`split_overrides`."""
    return [f"--{prefix}.{a[2:]}" if a.startswith("--") else a for a in args]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/train_depthmaster.py``; returns the exit status (0, or the
    failed step's)."""
    parser = tool_parser(
        "train_depthmaster.py",
        __doc__,
        "Other options are dm-lightning options: --KEY VALUE for every stage's fit "
        "(--trainer.devices 4), --stage1.KEY VALUE / --stage2.KEY VALUE for one stage "
        "(--stage1.trainer.max_steps 100), --test.KEY VALUE for the tests.",
    )
    add_recipe_arguments(parser)
    parser.add_argument("--run", required=True, help="the run folder (runs/recipe)")
    parser.add_argument(
        "--test",
        nargs="+",
        metavar="MODEL",
        help=f"models to test: {INPUT} (the first stage's model), stage1, stage2 "
        "(default: the last stage)",
    )
    args, rest = parser.parse_known_args(argv)
    try:
        if not (args.stage1 or args.stage2):
            raise ConfigError("give --stage1 CONFIG and/or --stage2 CONFIG")
        pipeline = recipe_from_args(args, rest, args.run)
        run_pipeline(pipeline)
    except DMLightningError as err:
        print(f"train_depthmaster.py: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(
            "train_depthmaster.py: interrupted; run the same command again to resume "
            "(from the last periodic last.ckpt)",
            file=sys.stderr,
        )
        return 130
    except PipelineError as err:
        if err.status == 128 + signal.SIGTERM:  # SIGTERM / SIGUSR1: see dm_lightning.cli
            advice = "it saved a resumable checkpoint: run the same command again to resume it"
        elif err.status > 128:  # killed (SIGKILL, out of memory): nothing saved then
            advice = "it was killed by a signal: run the same command again to resume it from "
            advice += "its last periodic last.ckpt"
        else:
            advice = "fix it and run the same command again"
        print(
            f"train_depthmaster.py: error: {err}; {advice} (finished stages are skipped, an "
            "interrupted one resumes).",
            file=sys.stderr,
        )
        return err.status
    return 0


__all__ = [
    "Pipeline",
    "PipelineError",
    "Stage",
    "TestMetricsWriter",
    "main",
    "pipeline_command",
    "run_pipeline",
]
