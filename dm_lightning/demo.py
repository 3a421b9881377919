"""End-to-end demo on a CPU: synthetic data, tiny model, stage 1, stage 2, evaluation table.

    python -m dm_lightning.demo            # or: make demo

Every step runs the same ``dm-lightning`` CLI a user runs, with the shipped configs:
1. writes the synthetic shards (``shards/synthetic``) and the tiny model folder
   (``shards/tiny-sd2``) if they are missing;
2. ``test`` of the untrained tiny model;
3. ``fit`` stage 1 (configs/tiny/stage1.yaml), ``test`` of its export;
4. ``fit`` stage 2 from the stage-1 export (configs/tiny/stage2.yaml), ``test`` of its export;
5. prints AbsRel / delta1 per synthetic test split and writes them to ``<run>/results.md``.
All TensorBoard logs go under one run folder, printed at the start.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from dm_lightning.cli import DepthMasterCLI, cli_args
from dm_lightning.cli import run_cli as cli_main


def ensure_data(shards: Path, seed: int) -> None:
    if (shards / "index.json").is_file():
        print(f"[demo] using synthetic shards in {shards}")
        return
    from dm_lightning.data.synthetic import generate

    print(f"[demo] writing synthetic shards to {shards}")
    generate(str(shards), seed=seed)


def ensure_model(model: Path, shards: Path, seed: int, vae_steps: int) -> None:
    if (model / "unet" / "config.json").is_file():
        print(f"[demo] using tiny model folder {model}")
        return
    from dm_lightning.tiny_model import build_tiny_model_folder

    patterns = [str(shards / src / "train-*.tar") for src in ("indoor", "outdoor")]
    build_tiny_model_folder(model, seed, patterns, vae_steps)


def run_cli(args: list[str]) -> DepthMasterCLI:
    """Run the ``dm-lightning`` CLI in this process, printing the command line first."""
    print("[demo] dm-lightning " + " ".join(args))
    return cli_main(args)


def test_metrics(config_dir: Path, data: Path, run: Path, name: str, model_path: Path) -> dict:
    configs = [config_dir / "tiny" / "eval.yaml", data]
    name = f"test-{name}"
    cli = run_cli(cli_args("test", configs, model_path, run, trainer__logger__init_args__name=name))
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def fit(
    config_dir: Path, data: Path, run: Path, stage: str, model_path: Path, steps: int | None
) -> Path:
    configs = [config_dir / "tiny" / f"{stage}.yaml", data]
    steps_arg = {"trainer__max_steps": steps} if steps else {}
    cli = run_cli(cli_args("fit", configs, model_path, run, **steps_arg))
    from dm_lightning.training.callbacks import ExportDepthMaster

    export = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ExportDepthMaster)).exported
    if export is None:
        raise RuntimeError(f"{stage} finished without an export")
    return export


def format_table(results: dict[str, dict], splits: list[str]) -> str:
    header = "| model | " + " | ".join(f"{s} AbsRel | {s} δ1" for s in splits) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(splits))]
    for stage, metrics in results.items():
        cells = []
        for s in splits:
            cells.append(f"{100 * metrics[f'test/{s}/abs_rel']:.1f}")
            cells.append(f"{100 * metrics[f'test/{s}/delta1']:.1f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default=None, help="run folder (default runs/demo-<time>)")
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
    run = Path(args.run_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    run.mkdir(parents=True, exist_ok=True)
    print(f"[demo] run folder: {run.resolve()}  (tensorboard --logdir {run})")
    shards, model, configs = Path(args.shards), Path(args.model), Path(args.configs)
    ensure_data(shards, args.seed)
    ensure_model(model, shards, args.seed, args.vae_steps)

    data = data_config(configs / "data" / "synthetic.yaml", shards, run)

    results: dict[str, dict] = {}
    results["untrained"] = test_metrics(configs, data, run, "untrained", model)
    export1 = fit(configs, data, run, "stage1", model, args.stage1_steps)
    results["stage 1"] = test_metrics(configs, data, run, "stage1", export1)
    export2 = fit(configs, data, run, "stage2", export1, args.stage2_steps)
    results["stage 2"] = test_metrics(configs, data, run, "stage2", export2)

    splits = ["synthetic_indoor", "synthetic_outdoor"]
    table = format_table(results, splits)
    (run / "results.md").write_text(
        "# dm_lightning demo: tiny DepthMaster on synthetic data\n\n"
        "AbsRel and δ1 (x100) on the held-out synthetic test splits, sqrt-disparity alignment.\n\n"
        + table
        + "\n"
    )
    print("\n" + table)
    print(f"\n[demo] finished in {time.time() - start:.0f} s; logs and exports in {run.resolve()}")
    return results


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
