"""The launchers of tools/slurm/: the torchrun script started as two "nodes" on 127.0.0.1
(node ranks 0 and 1, one CPU process each, gloo) fits the tiny stage 1 for two steps, each
rank on its own shards (ranks x workers disjoint shard subsets); the sbatch template under a
fake srun runs the README's srun command."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from helpers import cli_args, free_port

from dm_lightning.training.checkpoints import load_checkpoint_safely

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


def _start_nodes(tmp_path: Path, data_config: Path, args: list[str]) -> list[subprocess.Popen]:
    """tools/slurm/torchrun_multinode.sh as node ranks 0 and 1 (one process each) on
    127.0.0.1, the stage-1 tiny config and ``data_config`` plus ``args``; ``tmp_path`` is on
    PYTHONPATH for the tests' callback modules."""
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
    return [
        subprocess.Popen(
            ["bash", str(SLURM_DIR / "torchrun_multinode.sh"), *args],
            cwd=REPO,
            env={**env, "NODE_RANK": str(node_rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node_rank in (0, 1)
    ]


def test_launcher_scripts_are_valid_bash():
    for script in (SLURM_DIR / "fit.sbatch", SLURM_DIR / "torchrun_multinode.sh"):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_a_successful_command_closes_the_process_group():
    """A rank that leaves the Gloo group open can abort at interpreter exit after a good fit
    (SIGABRT, "terminate called without an active exception"; seen on rank 0 of the two-node
    fit below): the CLI destroys the group before it returns 0."""
    import torch.distributed as dist

    from dm_lightning.cli import close_process_group

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized()
    close_process_group()
    assert not dist.is_initialized()
    close_process_group()  # without a group: nothing to do, no error


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
    launchers = _start_nodes(tmp_path, data_config, extra)
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


# Put on the children's PYTHONPATH and added with --trainer.callbacks+=: how far each rank got.
STEP_MARKER = '''
import json
import os
import time
from pathlib import Path

import lightning as L


def _write(path, record):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)  # a reader never sees half a file


class MarkSteps(L.Callback):
    """step-rank<global rank>.json: this worker's pid and global step, rewritten at the start of
    training and after every batch; stopped-rank<global rank>.json: the step and the exception
    when fit stops by one."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def _mark(self, trainer, name, **extra):
        record = {"pid": os.getpid(), "global_step": trainer.global_step, **extra}
        _write(self.out_dir / f"{name}-rank{trainer.global_rank}.json", record)

    def on_train_start(self, trainer, pl_module):
        self._mark(trainer, "step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._mark(trainer, "step")

    def on_exception(self, trainer, pl_module, exception):
        self._mark(trainer, "stopped", exception=type(exception).__name__)
'''


def _read_marks(records: Path, name: str) -> dict[int, dict]:
    """{global rank: record} of the MarkSteps files ``<name>-rank<r>.json`` written so far."""
    marks = {}
    for rank in (0, 1):
        path = records / f"{name}-rank{rank}.json"
        if path.is_file():
            marks[rank] = json.loads(path.read_text())
    return marks


def _kill_workers(records: Path) -> None:
    """SIGKILL the workers MarkSteps recorded that still run. torchrun starts each worker in a
    session of its own, so killing a launcher leaves its worker running (the whole 400 steps)."""
    for mark in _read_marks(records, "step").values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(mark["pid"], signal.SIGKILL)


def _finish(launchers, timeout: float) -> tuple[list[str], bool]:
    """Wait up to ``timeout`` s in all for the launchers; on a timeout kill them. Returns their
    outputs and whether they all ended by themselves."""
    deadline = time.monotonic() + timeout
    try:
        outputs = [
            p.communicate(timeout=max(0.1, deadline - time.monotonic()))[0] for p in launchers
        ]
    except subprocess.TimeoutExpired:
        for process in launchers:
            process.kill()
        return [p.communicate()[0] for p in launchers], False
    return outputs, True


START_STEP = 3  # the SIGTERM test signals once both ranks are past this step


def test_sigterm_on_two_nodes_saves_and_resumes(tmp_path, tiny_model, data_config):
    """SIGTERM to both torchrun launchers mid-fit (what a scheduler sends when it stops a
    multi-node job): every rank stops at the same batch, rank 0 saves last.ckpt, nothing hangs;
    the same command on both nodes plus --ckpt_path last finishes the run in the same folder."""
    (tmp_path / "marker.py").write_text(textwrap.dedent(STEP_MARKER))
    runs = tmp_path / "runs"

    def start(records: Path, max_steps: int, *extra: str) -> list[subprocess.Popen]:
        records.mkdir()
        args = cli_args(
            "fit",
            [],
            tiny_model,
            runs,
            trainer__accelerator="cpu",
            trainer__max_steps=max_steps,
            trainer__check_val_every_n_epoch=1000,  # no validation: steps only
            trainer__enable_progress_bar="false",
            extra=[
                "--trainer.callbacks+=marker.MarkSteps",
                f"--trainer.callbacks.out_dir={records}",
                *extra,
            ],
        )[1:]
        return _start_nodes(tmp_path, data_config, args)

    def tails(launchers, outputs) -> str:
        return "\n".join(
            _tail(f"node {i}", p, o) for i, (p, o) in enumerate(zip(launchers, outputs))
        )

    # 1. A long fit (400 steps, last.ckpt every 100: none before the stop), signalled once both
    # ranks are past step 3, node 1 half a second before node 0, as a scheduler's signals
    # reach several nodes. (With Lightning 2.6's own SIGTERM handler, which calls
    # dist.broadcast inside the handler, such staggered signals hung both ranks in 3 runs of
    # 3 until torchrun SIGKILLed them, no checkpoint saved: ResumableCheckpoint replaces it on
    # several ranks with a note that the ranks combine at the next batch start.)
    first = tmp_path / "records-1"
    launchers = start(first, 400)
    try:
        deadline = time.monotonic() + 120
        while True:
            marks = _read_marks(first, "step")
            if len(marks) == 2 and all(m["global_step"] >= START_STEP for m in marks.values()):
                break
            if any(p.poll() is not None for p in launchers) or time.monotonic() > deadline:
                outputs, _ = _finish(launchers, 10)
                pytest.fail(
                    f"training did not get under way on both nodes\n{tails(launchers, outputs)}"
                )
            time.sleep(0.05)
        signalled = time.time()
        # To the launchers, as a scheduler stopping the job does: torchrun's agent catches
        # SIGTERM and sends it on to its worker's process group (reliable; seen in its log as
        # "Sending process <pid> closing signal SIGTERM"), waits up to 30 s, then SIGKILLs.
        launchers[1].send_signal(signal.SIGTERM)
        time.sleep(0.5)
        launchers[0].send_signal(signal.SIGTERM)
        outputs, ended = _finish(launchers, 60)
    finally:
        _kill_workers(first)
        for process in launchers:
            if process.poll() is None:
                process.kill()
    log = tails(launchers, outputs)
    assert ended, f"the launchers did not end within 60 s of SIGTERM (a hang)\n{log}"
    # torchrun waits 30 s for its worker after forwarding SIGTERM, then SIGKILLs it and says so:
    # the workers must have stopped by themselves.
    assert "forcefully exiting" not in log, log
    # Exit codes: each worker's dm-lightning returned 128 + 15 (it prints this line just before),
    # but torchrun does not pass that on: it re-raises its own SignalException and exits 1 (seen
    # with torch 2.x, a traceback in its output). Guaranteed is only a failed (non-zero) launcher.
    for node, output in enumerate(outputs):
        assert "dm-lightning: stopped by a signal" in output, f"node {node}\n{log}"
    assert all(p.returncode not in (0, None) for p in launchers), log
    assert "could not save" not in log, log

    stopped = _read_marks(first, "stopped")
    assert sorted(stopped) == [0, 1], log
    assert {m["exception"] for m in stopped.values()} == {"SIGTERMException"}, stopped
    steps = {m["global_step"] for m in stopped.values()}
    assert len(steps) == 1, f"the ranks stopped at different steps {stopped}\n{log}"
    (stopped_at,) = steps
    (run,) = (runs / "stage1").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    # Fresh: written after the signal (the periodic one comes at step 100), by rank 0.
    assert last.is_file() and last.stat().st_mtime >= signalled - 1, log
    assert stopped_at >= START_STEP
    assert load_checkpoint_safely(last)["global_step"] == stopped_at
    assert f"stopped by a signal at step {stopped_at}: resumable checkpoint saved" in outputs[0]
    assert not (run / "export").exists()

    # 2. The same command on both nodes plus --ckpt_path last, to 3 steps past the stop.
    target = stopped_at + 3
    second = tmp_path / "records-2"
    launchers = start(second, target, "--ckpt_path", "last")
    try:
        outputs, ended = _finish(launchers, TIMEOUT)
    finally:
        _kill_workers(second)
    log = tails(launchers, outputs)
    assert ended, f"the resumed two-node fit did not end within {TIMEOUT} s\n{log}"
    assert [p.returncode for p in launchers] == [0, 0], log
    assert "Restored all states from the checkpoint" in outputs[0], log
    assert [p.name for p in (runs / "stage1").iterdir()] == [run.name], log
    resumed = _read_marks(second, "step")
    assert [resumed[r]["global_step"] for r in (0, 1)] == [target, target], log
    assert load_checkpoint_safely(last)["global_step"] == target
    assert json.loads((run / "export.json").read_text())["global_step"] == target
    assert (run / "export" / "unet" / "config.json").is_file()


def test_in_process_recipe_steps_leave_the_process_group_to_the_next_step(monkeypatch):
    """An in-process recipe (torchrun ... train_depthmaster.py --in-process) runs every step
    in one process: only the console entry point closes the group, not each step."""
    from dm_lightning.recipes import step_runner

    calls = []
    monkeypatch.setattr(step_runner, "main", lambda args, **kw: calls.append(kw) or 0)
    assert step_runner.run_in_process(["fit"]) == 0
    assert calls == [{"close_group": False}]
