"""The ``dm-lightning`` steps of a recipe: their argument lists, and their checks before the
first one trains.

A pipeline (:mod:`dm_lightning.recipes.pipeline`) runs several ``dm-lightning`` steps in order; a
missing stage-2 config or a bad test option used to surface only after stage 1 had trained
for hours. :func:`check_pipeline` looks at every file and parses every step's full argument
list (configs, overlays, pass-through options) as ``dm-lightning`` will, without building a
model, so a mistake anywhere ends the run at once with one line naming it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from dm_lightning.cli import cli_args, run_cli
from dm_lightning.errors import ConfigError, DMLightningError, MissingPathError
from dm_lightning.models.model_facts import recorded_task

if TYPE_CHECKING:  # pipeline imports this module
    from dm_lightning.recipes.pipeline import Pipeline, Stage

INPUT = "input"  # ``--test`` name of the model the first stage starts from
# The callback that writes each test's metrics (defined with the pipeline); a wrong name
# fails check_pipeline's parse of the test step.
TEST_METRICS_WRITER = "dm_lightning.recipes.pipeline.TestMetricsWriter"


def fit_arguments(
    pipeline: Pipeline, stage: Stage, model_path: str | None, extra: Sequence[str] = ()
) -> list[str]:
    """The ``dm-lightning fit`` arguments of ``stage`` starting from ``model_path``."""

    return cli_args(
        "fit",
        [*stage.configs, pipeline.data],
        model_path,
        pipeline.run,
        trainer__logger__init_args__name=stage.name,
        extra=[*pipeline.fit_args, *stage.args, *extra],
    )


def evaluation_arguments(
    pipeline: Pipeline, name: str, model: str, overrides: dict[str, str] | None = None
) -> list[str]:
    """The ``dm-lightning test`` arguments of model ``name`` (folder ``model``), with the task
    class a baseline's export records (the eval config's otherwise)."""

    return cli_args(
        "test",
        [pipeline.eval_config, pipeline.test_data or pipeline.data],
        model,
        pipeline.run,
        model_class=recorded_task(model),
        trainer__logger__init_args__name=f"test-{name}",
        extra=[f"--trainer.callbacks+={TEST_METRICS_WRITER}", *pipeline.test_args],
        **(overrides or {}),
    )


def parsed_config(args: list[str], what: str) -> dict:
    """The composed config of ``dm-lightning ARGS`` (its ``--print_config``), parsed in this
    process without instantiating anything (~0.4 s).

    Raises:
        ConfigError: the arguments do not parse (unknown key, bad value, bad YAML), with
            ``what`` (e.g. ``stage2 (fit)``) in front of the CLI's one-line message.
    """

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            # LightningCLI warns when given args while sys.argv holds the tool's own options.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            run_cli([*args, "--print_config"])
    except SystemExit as done:
        if done.code not in (0, None):
            raise ConfigError(f"{what}: its options do not parse (exit {done.code})") from None
    except DMLightningError as err:
        raise ConfigError(f"{what}: {err}") from None
    return yaml.safe_load(printed.getvalue()) or {}


def check_pipeline(pipeline: Pipeline) -> str | None:
    """Check every config file and every step of ``pipeline`` before anything runs.

    Returns:
        The model the first stage starts from (``--model-path``, else the first stage's
        config's ``model.init_args.model_path``): what ``--test input`` tests.

    Raises:
        MissingPathError: a config file or ``--model-path`` that does not exist.
        ConfigError: a step whose options do not parse (named with the step), or
            ``--test input`` with no input model anywhere.
    """
    files = [(f"--{s.name}", c) for s in pipeline.stages for c in s.configs]
    files += [("--data", pipeline.data), ("--eval", pipeline.eval_config)]
    if pipeline.test_data is not None:
        files.append(("--test-data", pipeline.test_data))
    for option, path in files:
        if not Path(path).is_file():
            raise MissingPathError(f"{option} {path}: no such config file")
    if pipeline.model_path is not None and not Path(pipeline.model_path).exists():
        raise MissingPathError(f"--model-path {pipeline.model_path}: no such model folder or file")
    input_model = pipeline.model_path
    model = input_model
    for index, stage in enumerate(pipeline.stages):
        config = parsed_config(fit_arguments(pipeline, stage, model), f"{stage.name} (fit)")
        if index == 0 and input_model is None:
            init_args = (config.get("model") or {}).get("init_args") or {}
            input_model = init_args.get("model_path")
        # A later stage starts from this one's export, which does not exist yet: any path
        # parses the same.
        model = str(Path(pipeline.run) / stage.name / "export")
    for name in pipeline.tested:
        if name == INPUT and input_model is None:
            raise ConfigError(
                f"--test {INPUT}: the first stage's config names no model_path; give the input "
                "model with --model-path"
            )
        tested = input_model if name == INPUT else str(Path(pipeline.run) / name / "export")
        parsed_config(evaluation_arguments(pipeline, name, tested), f"test of {name}")
    return input_model
