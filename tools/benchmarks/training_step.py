"""``step`` (issue #11, Scale out): per-step CPU time of the Lightning stage-1 / stage-2
training steps against a plain PyTorch loop doing the same math, on the tiny model.

Both sides hold an equal copy of the same task (``Stage1`` with the tiny encoder of
configs/tiny/stage1.yaml, ``Stage2`` with its FE block) and run its own ``training_loss``
on the same in-memory finished batches: the Lightning side under ``Trainer.fit`` (loop,
hooks, non-finite guard, logging), the plain side in a bare ``zero_grad / backward / Adam
step`` loop. So the difference is what Lightning adds, not the loss.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from dm_lightning.data.packing import finish_training_batch
from dm_lightning.evaluation.tables import table_row
from dm_lightning.training.base import DepthMasterTask

from . import print_table_header, suite_parser
from .networks import TINY_ENCODER, stage_task, synthetic_batches, tiny_model_folder
from .process import pin_glibc_heap, quiet_lightning

GOAL_STEP_RATIO = 1.05  # Lightning step / plain PyTorch step, at most


def make_task(stage: int, folder: Path) -> DepthMasterTask:
    """The Lightning task of ``stage`` on the model folder (stage 1 with the tiny encoder);
    seeded, so every call gives an equal copy."""
    torch.manual_seed(0)
    return stage_task(stage, str(folder), TINY_ENCODER, lr=1e-4)


def plain_seconds_per_step(task: DepthMasterTask, batches: list, warmup: int, steps: int) -> float:
    """CPU seconds per step of a bare ``zero_grad / backward / Adam step`` loop on the task's
    ``training_loss`` of each finished batch (no Trainer, hooks, guard or logging), after
    ``warmup`` untimed steps, cycling over ``batches``."""
    optimizer = torch.optim.Adam(task.trainable_parameters(), lr=1e-4, weight_decay=0.0)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        # no Trainer, no DataModule: finished as DepthDataModule.on_after_batch_transfer does
        loss, _ = task.training_loss(finish_training_batch(batches[i % len(batches)]))
        loss.backward()
        optimizer.step()
    return (time.process_time() - start) / steps


def lightning_seconds_per_step(
    task: DepthMasterTask, batches: list, warmup: int, steps: int
) -> float:
    """CPU seconds per optimizer step of ``trainer.fit`` on ``task`` over ``batches`` (one
    epoch of ``warmup + steps`` batches), timed between the ends of step ``warmup`` and of
    the last: the whole loop (fetch, hooks, step, logging), none of fit's set-up."""
    ends: list[float] = []

    class StepClock(L.Callback):
        def on_train_batch_end(self, *args, **kwargs) -> None:
            ends.append(time.process_time())

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=warmup + steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[StepClock()],
    )  # fmt: skip
    # batch_size=None: the loader hands out the finished batches as they are
    loader = DataLoader(batches[: warmup + steps], batch_size=None, shuffle=False)
    trainer.fit(task, train_dataloaders=loader)
    assert len(ends) == warmup + steps, f"fit ran {len(ends)} steps"
    return (ends[-1] - ends[warmup - 1]) / steps


def run(args: argparse.Namespace) -> None:
    """Per-step CPU time of the Lightning stage-1 / stage-2 training steps against a plain
    PyTorch loop doing the same math, one torch thread, interleaved repeats, best of each."""
    torch.set_num_threads(1)  # one thread: CPU time of the process = time of the step
    pinned = pin_glibc_heap() if not args.system_malloc else False
    quiet_lightning()
    work = Path(args.work or tempfile.mkdtemp(prefix="dm-bench-step-"))
    folder = tiny_model_folder(work)
    batches = synthetic_batches(args.warmup + args.steps, args.batch, args.height, args.width)
    print_table_header(
        [
            f"stage (tiny model, batch {args.batch}, {args.height}x{args.width}, "
            f"heap {'pinned' if pinned else 'glibc default'})",
            "plain PyTorch (ms/step)", "Lightning (ms/step)", "overhead (ms/step)",
            "Lightning / plain", f"goal <= {GOAL_STEP_RATIO}x",
        ]
    )  # fmt: skip
    for stage in (1, 2):
        task, plain_task = make_task(stage, folder), make_task(stage, folder)
        plain, lightning = math.inf, math.inf
        # Interleaved repeats, best of each: slow phases of a shared machine hit both sides.
        for _ in range(args.repeats):
            steps = (batches, args.warmup, args.steps)
            plain = min(plain, plain_seconds_per_step(plain_task, *steps))
            lightning = min(lightning, lightning_seconds_per_step(task, *steps))
        ratio = lightning / plain
        verdict = "PASS" if ratio <= GOAL_STEP_RATIO else "FAIL"
        cells = [
            f"stage {stage}", f"{plain * 1e3:.1f}", f"{lightning * 1e3:.1f}",
            f"{(lightning - plain) * 1e3:.1f}", f"{ratio:.3f}x", verdict,
        ]  # fmt: skip
        print(table_row(cells), flush=True)
        del task, plain_task


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``step`` sub-command of tools/benchmark.py."""
    st = suite_parser(sub, "step", "Lightning training step vs a plain PyTorch loop", run, __doc__)
    st.add_argument("--work", default=None, help="folder for the tiny model (default: temp)")
    st.add_argument("--batch", type=int, default=4)
    st.add_argument("--height", type=int, default=96)
    st.add_argument("--width", type=int, default=128)
    st.add_argument("--warmup", type=int, default=5, help="untimed steps per repeat")
    st.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    st.add_argument("--repeats", type=int, default=3)
    st.add_argument(
        "--system-malloc", action="store_true", help="leave glibc's heap thresholds as they are"
    )
