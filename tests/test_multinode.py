"""The launchers of tools/slurm/: the torchrun script started as two "nodes" on 127.0.0.1
(node ranks 0 and 1, one CPU process each, gloo) fits the tiny stage 1 for two steps, each
rank on its own shards (ranks x workers disjoint shard subsets); the sbatch template under a
fake srun runs the README's srun command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml
from helpers import cli_args, free_port

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SLURM_DIR = REPO / "tools" / "slurm"
TORCHRUN = Path(sys.executable).parent / "torchrun"
TIMEOUT = 150  # seconds for the whole two-node fit; it takes about 30 on 2 busy cores

# Put on the children's PYTHONPATH and added with --trainer.callbacks+=: what each rank saw.
RECORDER = '''
import json
import os
from pathlib import Path

import lightning as L
import torch.distributed as dist


class RecordKeys(L.Callback):
    """Writes keys-rank<global rank>.json: the training sample keys this rank trained on and
    where it ran (world size, node rank, backend)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.keys = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.keys.extend(batch["key"])

    def on_fit_end(self, trainer, pl_module):
        record = {
            "keys": self.keys,
            "global_rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "local_rank": trainer.local_rank,
            "world_size": trainer.world_size,
            "backend": dist.get_backend(),
            "group_rank": os.environ.get("GROUP_RANK"),
            "global_step": trainer.global_step,
        }
        path = Path(self.out_dir) / f"keys-rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))
'''


def _tail(name: str, process: subprocess.Popen, text: str) -> str:
    return f"--- {name} (exit {process.returncode}) ---\n{text[-3000:]}"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PL_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def test_launcher_scripts_are_valid_bash():
    for script in (SLURM_DIR / "fit.sbatch", SLURM_DIR / "torchrun_multinode.sh"):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_two_node_torchrun_fit_trains_disjoint_shards(tmp_path, tiny_model, data_config):
    """tools/slurm/torchrun_multinode.sh on two "nodes" (node ranks 0 and 1, one process each)."""
    # data_config: 2 train shards per source, num_workers 0: 2 ranks x 1 reader -> disjoint.
    (tmp_path / "recorder.py").write_text(textwrap.dedent(RECORDER))
    records = tmp_path / "records"
    records.mkdir()
    extra = cli_args(
        "fit",
        [],
        tiny_model,
        tmp_path / "runs",
        trainer__accelerator="cpu",
        trainer__max_steps=2,
        trainer__enable_progress_bar="false",
        extra=[
            "--trainer.callbacks+=recorder.RecordKeys",
            f"--trainer.callbacks.out_dir={records}",
        ],
    )[1:]
    env = _env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        TORCHRUN=str(TORCHRUN),
        NNODES="2",
        GPUS_PER_NODE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        CONFIG=str(CONFIGS / "tiny" / "stage1.yaml"),
        DATA_CONFIG=str(data_config),
    )
    script = SLURM_DIR / "torchrun_multinode.sh"
    launchers = [
        subprocess.Popen(
            ["bash", str(script), *extra],
            cwd=REPO,
            env={**env, "NODE_RANK": str(node_rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node_rank in (0, 1)
    ]
    deadline = time.monotonic() + TIMEOUT
    outputs = []
    try:
        for process in launchers:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for process in launchers:
            process.kill()
        outputs = [p.communicate()[0] for p in launchers]
        timed_out = True
    else:
        timed_out = False
    tails = "\n".join(_tail(f"node {i}", p, o) for i, (p, o) in enumerate(zip(launchers, outputs)))
    assert not timed_out, f"the two-node fit did not end within {TIMEOUT} s\n{tails}"
    assert [p.returncode for p in launchers] == [0, 0], tails

    ranks = [json.loads((records / f"keys-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2], tails
    assert [r["node_rank"] for r in ranks] == [0, 1]
    assert [r["group_rank"] for r in ranks] == ["0", "1"]  # torchrun's node rank
    assert [r["local_rank"] for r in ranks] == [0, 0]
    assert [r["backend"] for r in ranks] == ["gloo", "gloo"]  # Lightning's CPU default
    assert [r["global_step"] for r in ranks] == [2, 2]
    keys = [set(r["keys"]) for r in ranks]
    assert keys[0] and keys[1], ranks
    assert not keys[0] & keys[1], f"both ranks trained on {sorted(keys[0] & keys[1])}"
    # One run folder, written by rank 0: the full-state checkpoint and the export.
    (run,) = (tmp_path / "runs" / "stage1").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file(), tails
    assert (run / "export" / "unet" / "config.json").is_file(), tails


def test_sbatch_template_runs_the_readme_command_under_srun(tmp_path):
    """tools/slurm/fit.sbatch as SLURM runs it (a fake srun on PATH, SLURM's variables set):
    the srun line, stage 1 and stage 2 with RESUME; stage 2's arguments parse."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "srun.calls"
    # Records its arguments; with EXEC set, runs the command (minus srun's own option) with
    # --print_config, which parses the whole command line and exits.
    (bin_dir / "srun").write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {calls}\n'
        'if [ -n "$EXEC" ]; then shift; exec "$@" --print_config; fi\n'
    )
    (bin_dir / "srun").chmod(0o755)
    slurm = dict(
        SLURM_JOB_ID="77", SLURM_NNODES="2", SLURM_NTASKS_PER_NODE="2", SLURM_CPUS_PER_TASK="6",
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
    )  # fmt: skip
    sbatch = ["bash", str(SLURM_DIR / "fit.sbatch")]
    one = subprocess.run(
        [*sbatch, "--trainer.max_steps", "5"], cwd=tmp_path, env=_env(**slurm),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert calls.read_text().splitlines() == [
        "--kill-on-bad-exit=1", "dm-lightning", "fit",
        "--config", "configs/stage1.yaml", "--config", "configs/data/hypersim_vkitti.yaml",
        "--trainer.num_nodes", "2", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_steps", "5",
    ]  # fmt: skip
    missing = subprocess.run(
        sbatch, cwd=tmp_path, env=_env(**slurm, STAGE="2"), capture_output=True, text=True
    )
    assert missing.returncode != 0 and "STAGE=2 needs MODEL_PATH" in missing.stderr

    export = "runs/depthmaster/stage1/slurm-76/export"
    two = subprocess.run(
        sbatch, cwd=REPO, env=_env(**slurm, STAGE="2", MODEL_PATH=export, RESUME="1", EXEC="1"),
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert calls.read_text().splitlines()[4:] == [
        "configs/stage2.yaml", "--config", "configs/data/hypersim_vkitti.yaml",
        "--trainer.num_nodes", "2", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--model.init_args.model_path", export, "--ckpt_path", "last",
    ]  # fmt: skip
    printed = yaml.safe_load(two.stdout)
    assert printed["trainer"]["num_nodes"] == 2 and str(printed["trainer"]["devices"]) == "2"
    assert printed["trainer"]["strategy"] == "ddp"
    assert printed["model"]["class_path"].endswith("Stage2")
    assert printed["model"]["init_args"]["model_path"] == export
    assert printed["ckpt_path"] == "last"
