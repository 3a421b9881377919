"""Training-step measurements of the GPU check: the stage tasks' own losses, one step as
Lightning runs it, the largest micro-batch with and without checkpointing, samples per
second, peak memory and achieved TFLOP/s.

A step here is what Lightning's automatic optimisation does with a :class:`Stage1` /
:class:`Stage2` task, without a Trainer (so that an out-of-memory probe can be caught and
retried): the packed batch is finished on the device (standing in for
``DepthDataModule.on_after_batch_transfer``, which Lightning calls before the step) and the
stage's ``training_loss`` runs under the precision plugin's forward context; then
``zero_grad`` (after the forward, as Lightning's closure does, so the previous step's
gradients are alive during the forward), backward, and the task's own Adam step. The
learning-rate schedule and logging are left out.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from dm_lightning.data.packing import finish_training_batch
from dm_lightning.gpu_check.search import largest_batch, oom_probe, release_memory
from dm_lightning.models.encoders import TimmEncoder
from dm_lightning.training.base import DepthMasterTask
from dm_lightning.training.stage1 import Stage1
from dm_lightning.training.stage2 import Stage2


def build_task(
    stage: int,
    model_path: str,
    encoder: dict[str, Any],
    compile_backend: str | None = None,
) -> DepthMasterTask:
    """The stage's task on ``model_path`` (stage 1 with a random-weight ``TimmEncoder`` of
    ``encoder``'s arguments), on the CPU, in training mode.

    ``compile_backend``: None runs eagerly; ``"inductor"`` sets the task's own
    ``compile_unet`` option (``torch.compile`` with its default backend, inductor); any other
    backend (the CPU smoke test's ``"eager"``, which only captures graphs) compiles the same
    U-Net in place with that backend instead, as ``compile_unet`` would.
    """

    torch.manual_seed(0)
    own = compile_backend == "inductor"
    if stage == 1:
        task = Stage1(model_path, encoder=TimmEncoder(**encoder), compile_unet=own)
    else:
        task = Stage2(model_path, compile_unet=own)
    if compile_backend is not None and not own:
        task.net.unet.compile(backend=compile_backend)
    return task.train()


def set_checkpointing(task: DepthMasterTask, on: bool) -> None:
    """Turn gradient checkpointing on or off through diffusers' switches, as the tasks'
    ``gradient_checkpointing`` (U-Net) and stage 2's ``decoder_checkpointing`` (VAE) options
    do when the task is built (one built task then serves both rows)."""
    modules = [task.net.unet] + ([task.net.vae] if task.stage_name == "Stage2" else [])
    for module in modules:
        if on:
            module.enable_gradient_checkpointing()
        else:
            module.disable_gradient_checkpointing()


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Lightning's forward context for ``precision`` ("32", "bf16-mixed", "16-mixed")."""
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    if precision in ("32", "32-true"):
        return Precision().forward_context()
    return MixedPrecision(precision, device.type).forward_context()


def packed_batch(n: int, height: int, width: int, device: torch.device) -> dict[str, Any]:
    """A random packed training batch made on ``device`` (the layout the data workers
    deliver, see :func:`~dm_lightning.data.packing.pack_training_batch`): RGB uint8, depth in
    millimetres from 0.5 to 10 m, half the samples flipped, valid range 1e-5 to 65 m."""
    g = torch.Generator(device=device).manual_seed(n)
    return {
        "rgb": torch.randint(0, 256, (n, height, width, 3), generator=g, device=device,
                             dtype=torch.uint8),
        "depth_units": torch.randint(500, 10_000, (n, 1, height, width), generator=g,
                                     device=device, dtype=torch.int16),
        "depth_scale": torch.full((n,), 1e-3, device=device),
        "flip": torch.arange(n, device=device) % 2 == 1,
        "min_depth": torch.full((n,), 1e-5, device=device, dtype=torch.float64),
        "max_depth": torch.full((n,), 65.0, device=device, dtype=torch.float64),
        "key": [f"s{i}" for i in range(n)],
    }  # fmt: skip


class StepRunner:
    """Training steps of one task on one device at one resolution and precision."""

    def __init__(
        self, task: DepthMasterTask, device: torch.device, height: int, width: int
    ) -> None:
        self.task = task.to(device)
        self.device, self.height, self.width = device, height, width
        self.precision = "32"
        self.optimizer = task.configure_optimizers()["optimizer"]
        self._batch: tuple[int, dict[str, Any]] | None = None
        # Adam's moments exist from the first step on: allocate them now (a step on zero
        # gradients moves no weight), so that every probe counts them.
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def batch(self, n: int) -> dict[str, Any]:
        if self._batch is None or self._batch[0] != n:
            self._batch = None  # free the old one first
            self._batch = (n, packed_batch(n, self.height, self.width, self.device))
        return self._batch[1]

    def step(self, n: int) -> Tensor:
        """One optimizer step at micro-batch ``n``; the loss (not waited for)."""
        # No DataModule here: finish the packed batch as its on_after_batch_transfer does.
        batch = finish_training_batch(self.batch(n))
        with precision_context(self.precision, self.device):
            loss, _ = self.task.training_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def reset(self) -> None:
        """Free the gradients and the batch (after a failed step; Adam's state stays)."""
        self.optimizer.zero_grad(set_to_none=True)
        self._batch = None
        release_memory(self.device)

    def close(self) -> None:
        """Free the optimizer state, gradients and batch (the task stays)."""
        self.optimizer.state.clear()
        self.reset()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """GiB: ``torch.cuda.max_memory_allocated`` since the last reset on CUDA; on the CPU the
    process's peak resident set since it started (Linux ``ru_maxrss``, kB), all it has."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed_steps(runner: StepRunner, n: int, steps: int, warm: bool = False) -> dict[str, Any]:
    """``steps`` timed steps at micro-batch ``n``, after one warm-up step unless ``warm`` (the
    last step already ran at ``n``: kernels chosen, allocator cache grown): seconds per step
    (wall clock, the device waited for), samples per second, the warm-up's seconds (a
    compiled U-Net compiles there; None when skipped) and the peak memory of all of them
    (GiB)."""
    reset_peak_memory(runner.device)
    first = None
    if not warm:
        start = time.perf_counter()
        runner.step(n)
        _sync(runner.device)
        first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss = runner.step(n)
    _sync(runner.device)
    seconds = (time.perf_counter() - start) / steps
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {float(loss)} at micro-batch {n}")
    return {
        "seconds_per_step": seconds,
        "samples_per_s": n / seconds,
        "first_step_s": first,
        "peak_memory_gb": peak_memory_gb(runner.device),
    }


def search_and_time(
    runner: StepRunner,
    limit: int,
    search_seconds: float,
    steps: int,
    train_gflops: float,
) -> dict[str, Any]:
    """The largest micro-batch up to ``limit`` that trains (probing for at most
    ``search_seconds``), then :func:`timed_at_most` there."""
    found = largest_batch(oom_probe(runner.step, runner.device), limit, search_seconds)
    if found.batch == 0:
        raise MemoryError(f"micro-batch 1 does not fit (probes: {found.probes})")
    return {
        "largest_batch": found.batch,
        "searched_up_to": limit,
        "search_capped": found.capped,
        "probes": [[n, ok] for n, ok in found.probes],
        # The last probe ran at the answer (a search that ends on a "yes"): already warm.
        **timed_at_most(runner, found.batch, steps, train_gflops,
                        warm=found.probes[-1] == (found.batch, True)),
    }  # fmt: skip


def timed_at_most(
    runner: StepRunner, batch: int, steps: int, train_gflops: float, warm: bool = False
) -> dict[str, Any]:
    """:func:`timed_steps` at ``batch``, halving it while the steps run out of memory (a size
    one probe step fitted can fail over several steps, the allocator's cache fragmenting; a
    compiled U-Net may need more than the eager one): the timings, the ``batch`` they ran at
    and TFLOP/s from ``train_gflops`` per image (the model's forward + backward count: a
    checkpointed step recomputes more than that, so its TFLOP/s is the useful work, as MFU
    counts it)."""
    while batch >= 1:
        try:
            row = timed_steps(runner, batch, steps, warm)
        except torch.OutOfMemoryError:
            row = None  # memory freed below, outside the except block (see oom_probe)
        if row is not None:
            row.update(batch=batch, tflops=row["samples_per_s"] * train_gflops / 1e3)
            return row
        release_memory(runner.device)
        batch, warm = batch // 2, False
    raise MemoryError("the timed steps do not fit even at micro-batch 1")


@contextlib.contextmanager
def runner_for(
    task: DepthMasterTask, device: torch.device, height: int, width: int
) -> Iterator[StepRunner]:
    """A :class:`StepRunner` whose optimizer state is freed on exit."""
    runner = StepRunner(task, device, height, width)
    try:
        yield runner
    finally:
        runner.close()
