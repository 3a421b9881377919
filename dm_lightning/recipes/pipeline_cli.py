"""The command line of ``tools/train_depthmaster.py`` (:func:`main`), and the command that runs a
:class:`~dm_lightning.recipes.pipeline.Pipeline` (:func:`pipeline_command`): recipe options,
and ``dm-lightning`` options passed on to every stage, one stage or the tests.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from dm_lightning.errors import ConfigError, DMLightningError
from dm_lightning.recipes import pipeline as recipe_pipeline
from dm_lightning.recipes.pipeline import Pipeline, Stage, run_pipeline
from dm_lightning.recipes.step_runner import PipelineError
from dm_lightning.recipes.steps import INPUT
from dm_lightning.tool_cli import tool_parser

TOOL = "tools/train_depthmaster.py"

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


def recipe_parser(
    prog: str, description: str | None, more: str, run_help: str
) -> argparse.ArgumentParser:
    """The parser of a recipe tool (``train_depthmaster.py``, ``run_ablations.py``): the tools'
    parser (:func:`~dm_lightning.tool_cli.tool_parser`), the recipe options
    (:func:`add_recipe_arguments`) and ``--run``; the tool adds its own after them."""
    parser = tool_parser(prog, description, more)
    add_recipe_arguments(parser)
    parser.add_argument("--run", required=True, help=run_help)
    return parser


def recipe_from_args(args: argparse.Namespace, rest: Sequence[str], run: str) -> Pipeline:
    """The :class:`Pipeline` of parsed recipe options and pass-through ``dm-lightning``
    options (see :func:`split_overrides`).

    Raises:
        ConfigError: neither ``--stage1`` nor ``--stage2``, or a value with no ``--KEY``.
    """
    if not (args.stage1 or args.stage2):
        raise ConfigError("give --stage1 CONFIG and/or --stage2 CONFIG")
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
    parser = recipe_parser(
        "train_depthmaster.py",
        recipe_pipeline.__doc__,
        "Other options are dm-lightning options: --KEY VALUE for every stage's fit "
        "(--trainer.devices 4), --stage1.KEY VALUE / --stage2.KEY VALUE for one stage "
        "(--stage1.trainer.max_steps 100), --test.KEY VALUE for the tests.",
        run_help="the run folder (runs/recipe)",
    )
    parser.add_argument(
        "--test",
        nargs="+",
        metavar="MODEL",
        help=f"models to test: {INPUT} (the first stage's model), stage1, stage2 "
        "(default: the last stage)",
    )
    args, rest = parser.parse_known_args(argv)
    try:
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
