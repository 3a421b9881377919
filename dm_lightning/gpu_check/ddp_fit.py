"""The GPU check's distributed fit: the real ``dm-lightning fit`` of the tiny stage 1, in a
subprocess, with ``--trainer.strategy ddp --trainer.devices 1`` (one process, a real process
group: NCCL on a GPU, gloo on the CPU), and a callback that records what the run saw."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
import yaml

from dm_lightning.cli import cli_args
from dm_lightning.data.synthetic.writer import generate
from dm_lightning.recipes.demo import data_config
from dm_lightning.testing.tiny_model import make_tiny_depthmaster, save_tiny_model

# Set by a job scheduler or a launcher around this tool; the child is a run of its own.
_LAUNCHER_ENV = ("SLURM_", "PL_", "TORCHELASTIC_")
_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK",
                  "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")  # fmt: skip


class RecordDistributed(L.Callback):
    """Writes ``out`` (JSON) at the end of the fit: the process group's backend and world
    size, the strategy, the device, the optimizer steps done and whether validation ran."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "device": str(pl_module.device),
            "global_step": trainer.global_step,
            "validated": self.validated,
        }
        Path(self.out).write_text(json.dumps(record))


def prepare_inputs(work: Path, configs: Path, steps: int) -> tuple[Path, Path]:
    """A tiny model folder and small synthetic shards in ``work`` (made once), and a data
    config (``configs/data/synthetic.yaml`` pointed at them, micro-batch 2, ``steps``
    batches per epoch so that one validation runs at the end, no loader workers); returns
    (model folder, data config)."""

    model = work / "tiny-sd2"
    if not (model / "unet").is_dir():
        save_tiny_model(model, make_tiny_depthmaster(0))
    shards = work / "shards"
    if not (shards / "index.json").is_file():
        counts = {"train": 8, "val": 4, "test": 4}
        generate(str(shards), counts=counts, samples_per_shard=8, seed=1, progress=False)
    # The demo's own rewrite of the shipped config's shard paths, then the check's sizes.
    data = data_config(configs / "data" / "synthetic.yaml", shards, work)
    cfg = yaml.safe_load(data.read_text())
    args = cfg["data"]["init_args"]
    for source in args["train"]:
        source["batch_size"] = 2
    args.update(batches_per_epoch=steps, eval_batch_size=4, num_workers=0)
    data.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return model, data


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """This environment less a launcher's variables, with this ``dm_lightning`` first on
    ``PYTHONPATH`` (the child runs the same code, installed or not) and a free local port."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_LAUNCHER_ENV) and k not in _LAUNCHER_VARS}  # fmt: skip
    root = str(Path(__file__).resolve().parents[2])  # the folder holding dm_lightning/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), PYTHONWARNINGS="ignore")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def ddp_fit(
    work: Path, configs: Path, accelerator: str, steps: int, timeout: float
) -> dict[str, Any]:
    """Run the fit and check it: exit code 0, the expected backend (``nccl`` on ``gpu``,
    ``gloo`` on ``cpu``), world size 1 and ``steps`` optimizer steps.

    Raises:
        RuntimeError: any of these fails (with the run's last output lines).
    """

    work.mkdir(parents=True, exist_ok=True)
    model, data = prepare_inputs(work, configs, steps)
    record = work / "ddp-record.json"
    record.unlink(missing_ok=True)
    args = cli_args(
        "fit", [configs / "tiny" / "stage1.yaml", data], model, work / "runs",
        trainer__strategy="ddp", trainer__devices=1, trainer__accelerator=accelerator,
        trainer__max_steps=steps, trainer__enable_progress_bar="false",
        extra=[f"--trainer.callbacks+={RecordDistributed.__module__}.RecordDistributed",
               f"--trainer.callbacks.out={record}"],
    )  # fmt: skip
    command = [sys.executable, "-m", "dm_lightning", *args]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=child_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"the ddp fit did not finish in {timeout:.0f} s") from error
    seconds = time.perf_counter() - start
    tail = (done.stdout + done.stderr)[-1500:]
    if done.returncode != 0:
        raise RuntimeError(f"the ddp fit exited {done.returncode}: ...{tail}")
    if not record.is_file():
        raise RuntimeError(f"the ddp fit exited 0 but wrote no record {record}: ...{tail}")
    seen = json.loads(record.read_text())
    expected = {"backend": "nccl" if accelerator == "gpu" else "gloo", "world_size": 1,
                "global_step": steps}  # fmt: skip
    wrong = {k: seen.get(k) for k, v in expected.items() if seen.get(k) != v}
    if wrong:
        raise RuntimeError(f"the ddp fit ran, but with {wrong}; expected {expected}")
    return {"exit_code": done.returncode, "seconds": seconds, **seen,
            "command": "dm-lightning " + " ".join(args)}  # fmt: skip
