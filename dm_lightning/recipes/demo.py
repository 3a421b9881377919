"""End-to-end demo on a CPU: synthetic data, tiny model, stage 1, stage 2, evaluation table.

    python -m dm_lightning.recipes.demo            # or: make demo

Every step runs the same ``dm-lightning`` CLI a user runs, with the shipped configs, through
the recipe pipeline (:mod:`dm_lightning.recipes.pipeline`, the printed
``tools/train_depthmaster.py``
command):
1. writes the synthetic shards (``shards/synthetic``) and the tiny model folder
   (``shards/tiny-sd2``) if they are missing;
2. ``fit`` stage 1 (configs/tiny/stage1.yaml) into ``<run>/stage1/version_<n>``;
3. ``fit`` stage 2 from the stage-1 export (configs/tiny/stage2.yaml) into
   ``<run>/stage2/version_<n>``;
4. ``test`` of the untrained tiny model and of both exports (``<run>/test-<model>/``);
5. prints AbsRel / delta1 per synthetic test split and writes them to ``<run>/results.md``.
Everything goes under one run folder, ``runs/tiny`` by default (the folder README's commands
use), printed at the start. Running the demo again skips what is finished there and resumes
an interrupted stage; ``--run-dir`` starts elsewhere.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from dm_lightning.data.synthetic import generate
from dm_lightning.recipes.pipeline import (
    INPUT,
    Pipeline,
    Stage,
    read_results,
    run_pipeline,
)
from dm_lightning.recipes.pipeline_cli import pipeline_command
from dm_lightning.recipes.step_runner import PipelineError
from dm_lightning.testing.tiny_model import build_tiny_model_folder

TITLE = "dm_lightning demo: tiny DepthMaster on synthetic data"
LABELS = {INPUT: "untrained", "stage1": "stage 1", "stage2": "stage 2"}


def ensure_data(shards: Path, seed: int) -> None:
    if (shards / "index.json").is_file():
        print(f"[demo] using synthetic shards in {shards}")
        return

    print(f"[demo] writing synthetic shards to {shards}")
    generate(str(shards), seed=seed)


def ensure_model(model: Path, shards: Path, seed: int, vae_steps: int) -> None:
    if (model / "unet" / "config.json").is_file():
        print(f"[demo] using tiny model folder {model}")
        return

    patterns = [str(shards / src / "train-*.tar") for src in ("indoor", "outdoor")]
    build_tiny_model_folder(model, seed, patterns, vae_steps)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run-dir",
        default="runs/tiny",
        help="run folder (default %(default)s, where README's commands look; a finished stage "
        "in it is skipped, an interrupted one resumes)",
    )
    parser.add_argument("--shards", default="shards/synthetic")
    parser.add_argument("--model", default="shards/tiny-sd2")
    parser.add_argument("--configs", default="configs", help="folder of the shipped configs")
    parser.add_argument(
        "--stage1-steps", type=int, default=None, help="override configs/tiny/stage1.yaml"
    )
    parser.add_argument(
        "--stage2-steps", type=int, default=None, help="override configs/tiny/stage2.yaml"
    )
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.time()
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    print(f"[demo] run folder: {run.resolve()}  (tensorboard --logdir {run})")
    shards, model, configs = Path(args.shards), Path(args.model), Path(args.configs)
    ensure_data(shards, args.seed)
    ensure_model(model, shards, args.seed, args.vae_steps)

    steps = {1: args.stage1_steps, 2: args.stage2_steps}
    pipeline = Pipeline(
        stages=tuple(
            Stage(
                f"stage{n}",
                (str(configs / "tiny" / f"stage{n}.yaml"),),
                ("--trainer.max_steps", str(steps[n])) if steps[n] else (),
            )
            for n in (1, 2)
        ),
        data=str(data_config(configs / "data" / "synthetic.yaml", shards, run)),
        run=str(run),
        eval_config=str(configs / "tiny" / "eval.yaml"),
        model_path=str(model),
        test=(INPUT, "stage1", "stage2"),
        in_process=True,  # one CPU process: no start-up cost per step
    )
    print("[demo] the same as: " + shlex.join(pipeline_command(pipeline)))
    try:
        results = run_pipeline(pipeline, title=TITLE, labels=LABELS)
    except PipelineError as err:
        raise SystemExit(f"[demo] {err}; run the demo again to go on from there") from err
    # run_pipeline printed the table (rows labelled by LABELS) and wrote it to results.md.
    rows = {LABELS[name]: metrics for name, metrics in results.items()}
    print(
        f"\n[demo] finished in {time.time() - start:.0f} s; logs, exports and results.md in {run}"
    )
    export = read_results(run)["stage2"]["model"]
    print(
        "[demo] evaluate the stage-2 export again: dm-lightning test --config "
        f"{pipeline.eval_config} --config {pipeline.data} --model.init_args.model_path {export}"
    )
    return rows


def data_config(shipped: Path, shards: Path, run: Path) -> Path:
    """The shipped synthetic data config with its shard paths under ``shards``, saved in the run."""
    import yaml

    def move(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("shards/synthetic/"):
            return str(shards / value[len("shards/synthetic/") :])
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    path = run / "data.yaml"
    path.write_text(yaml.safe_dump(move(yaml.safe_load(shipped.read_text())), sort_keys=False))
    return path


if __name__ == "__main__":
    main()
