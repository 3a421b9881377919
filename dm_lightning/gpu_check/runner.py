"""The GPU check's plan and sections: each section runs, is timed and records its result or
its error in the results (a failing section never stops the others), within a time budget.

Sections, in order: ``flops`` (the ``scale`` benchmark's counts per image), ``ddp_fit``
(run first, while the GPU is still empty), ``network`` (the SD-2-sized random network saved as
a model folder), ``train_stage1_bf16-mixed``, ``train_stage1_32``,
``train_stage2_bf16-mixed`` (largest micro-batch without and with checkpointing, samples/s,
peak memory, TFLOP/s), ``eval``, ``predict``, ``compile_stage1_bf16-mixed``,
``compile_stage2_bf16-mixed`` (last: compiling takes the longest and varies the most).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dm_lightning.gpu_check import inference, training
from dm_lightning.gpu_check.ddp_fit import ddp_fit
from dm_lightning.gpu_check.report import device_info
from dm_lightning.gpu_check.search import release_memory
from dm_lightning.models.pipeline_depthmaster import DEFAULT_PROCESSING_RES
from dm_lightning.testing.real_size import make_sd2_sized_depthmaster
from dm_lightning.testing.tiny_model import make_tiny_depthmaster

TRAIN_SECTIONS = {  # name -> (stage, precision)
    "train_stage1_bf16-mixed": (1, "bf16-mixed"),
    "train_stage1_32": (1, "32"),
    "train_stage2_bf16-mixed": (2, "bf16-mixed"),
}
COMPILE_SECTIONS = {"compile_stage1_bf16-mixed": (1, "bf16-mixed"),
                    "compile_stage2_bf16-mixed": (2, "bf16-mixed")}  # fmt: skip
SECTIONS = ("flops", "ddp_fit", "network", *TRAIN_SECTIONS, "eval", "predict", *COMPILE_SECTIONS)
NEEDS_NETWORK = (*TRAIN_SECTIONS, "eval", "predict", *COMPILE_SECTIONS)
NEEDS_FLOPS = (*TRAIN_SECTIONS, *COMPILE_SECTIONS)  # for TFLOP/s


@dataclasses.dataclass
class Plan:
    """Sizes and limits of one run (see :func:`cuda_plan`, :func:`smoke_plan`)."""

    device: str
    # "sd2" (dm_lightning.testing.real_size) or "tiny" (dm_lightning.testing.tiny_model)
    network: str
    height: int
    width: int
    max_batch: int  # largest micro-batch a search tries
    search_seconds: float  # no new probe of a search after this long
    timed_steps: int  # timed training steps after one warm-up
    eval_images: int
    eval_batch: int
    predict_input: tuple[int, int]
    predict_res: int
    predict_repeats: int
    ddp_steps: int
    ddp_timeout: float
    accelerator: str  # of the ddp fit
    compile_backend: str
    budget_seconds: float  # sections not started by then are recorded as skipped
    compile_min_seconds: float  # a compile section starts only with this much budget left
    threads: int | None = None  # torch's CPU threads (None: leave torch's default)


def cuda_plan() -> Plan:
    """480x640 on the first CUDA device, SD-2 size; about 7 minutes (compiling the last 2-3)."""
    return Plan(
        device="cuda", network="sd2", height=480, width=640, max_batch=128,
        search_seconds=20.0, timed_steps=2, eval_images=32, eval_batch=8,
        predict_input=(1536, 2048), predict_res=DEFAULT_PROCESSING_RES, predict_repeats=5,
        ddp_steps=5, ddp_timeout=180.0, accelerator="gpu", compile_backend="inductor",
        budget_seconds=420.0, compile_min_seconds=90.0,
    )  # fmt: skip


def smoke_plan() -> Plan:
    """The same sections on the CPU in well under a minute: tiny model, 32x32, micro-batches
    up to 2, one CPU thread (on a shared machine, threads waiting for each other made tiny
    steps 5-10x slower), graph capture only (``torch.compile(backend="eager")``: inductor's
    C++ build would take minutes)."""
    return Plan(
        device="cpu", network="tiny", height=32, width=32, max_batch=2, search_seconds=20.0,
        timed_steps=1, eval_images=2, eval_batch=2, predict_input=(48, 64), predict_res=32,
        predict_repeats=1, ddp_steps=2, ddp_timeout=150.0, accelerator="cpu",
        compile_backend="eager", budget_seconds=300.0, compile_min_seconds=0.0, threads=1,
    )  # fmt: skip


def build_network(network: str, folder: Path) -> dict[str, Any]:
    """Save the random network of ``network`` size as a model folder (what the tasks load)."""

    net = make_sd2_sized_depthmaster() if network == "sd2" else make_tiny_depthmaster()
    net.save_pretrained(folder, metadata={"gpu_check": network})
    count = sum(p.numel() for p in net.unet.parameters()) / 1e6
    return {"folder": str(folder), "unet_m": count,
            "vae_m": sum(p.numel() for p in net.vae.parameters()) / 1e6}  # fmt: skip


class GpuCheck:
    """Runs the sections of ``plan``.

    Args:
        plan: sizes and limits.
        work: folder for the model folders, shards and runs.
        configs: the repository's ``configs/`` (the ddp fit uses the tiny stage-1 config).
        encoder: ``TimmEncoder`` arguments of the stage-1 alignment encoder (random weights).
        count_flops: ``(network, height, width) -> {stage: {"train", "forward" (GFLOPs per
            image), "total", "trainable" (M parameters)}}``: the ``scale`` benchmark's counts.
    """

    def __init__(
        self,
        plan: Plan,
        work: Path,
        configs: Path,
        encoder: dict[str, Any],
        count_flops: Callable[[str, int, int], dict[int, dict[str, float]]],
    ) -> None:
        self.plan, self.work, self.configs = plan, work, configs
        self.encoder, self.count_flops = encoder, count_flops
        self.device = torch.device(plan.device)
        if plan.threads is not None:
            torch.set_num_threads(plan.threads)
        self.start = time.monotonic()
        self.sections: dict[str, dict[str, Any]] = {}
        self._task: tuple[tuple, Any] | None = None
        self.results = {
            "schema": 1,
            "mode": "smoke" if plan.device == "cpu" else "cuda",
            "network": plan.network,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "plan": dataclasses.asdict(plan),
            "device": device_info(self.device),
            "sections": self.sections,
        }

    def left(self) -> float:
        return self.plan.budget_seconds - (time.monotonic() - self.start)

    def run(self, names: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
        """Run ``names`` (in :data:`SECTIONS` order; ``network`` and ``flops`` added when one
        needs them)."""
        wanted = set(names) | ({"network"} if set(names) & set(NEEDS_NETWORK) else set())
        wanted |= {"flops"} if wanted & set(NEEDS_FLOPS) else set()
        for name in SECTIONS:
            if name in wanted:
                self.section(name, getattr(self, "_" + name.split("_")[0]), name)
        self._drop_task()
        self.results["seconds"] = time.monotonic() - self.start
        return self.results

    def section(self, name: str, fn: Callable[[str], dict[str, Any]], arg: str) -> None:
        start = time.monotonic()
        record: dict[str, Any] = {"ok": False, "seconds": 0.0, "error": None, "result": None}
        needs = self.plan.compile_min_seconds if name in COMPILE_SECTIONS else 0.0
        if self.left() <= needs:
            record["error"] = (f"skipped: {self.left():.0f} s of the {self.plan.budget_seconds:.0f}"
                               f" s budget left; run it alone with --sections {name}")  # fmt: skip
        elif name in NEEDS_NETWORK and not self.sections.get("network", {}).get("ok"):
            record["error"] = "skipped: the network section failed"
        else:
            try:
                record["result"] = fn(arg)
                errors = [r["error"] for r in record["result"].get("rows", []) if "error" in r]
                record["ok"] = not errors
                record["error"] = "; ".join(errors) or None
            except Exception as error:  # recorded; the next section still runs
                record["error"] = f"{type(error).__name__}: {error}"
                record["traceback"] = traceback.format_exc()[-3000:]
            if not record["ok"]:
                # Outside the except block, whose traceback holds the failed step's tensors.
                self._drop_task()
        record["seconds"] = time.monotonic() - start
        self.sections[name] = record
        print(f"gpu_check: {name}: {'ok' if record['ok'] else record['error']} "
              f"({record['seconds']:.1f} s)", flush=True)  # fmt: skip

    # ---- sections ----------------------------------------------------------------------
    def _flops(self, _: str) -> dict[str, Any]:
        counts = self.count_flops(self.plan.network, self.plan.height, self.plan.width)
        return {f"stage{k}": {"train_gflops": v["train"], "forward_gflops": v["forward"],
                              "parameters_m": v["total"], "trainable_m": v["trainable"]}
                for k, v in counts.items()}  # fmt: skip

    def _ddp(self, _: str) -> dict[str, Any]:
        p = self.plan
        return ddp_fit(self.work / "ddp", self.configs, p.accelerator, p.ddp_steps, p.ddp_timeout)

    def _network(self, _: str) -> dict[str, Any]:
        return build_network(self.plan.network, self.work / f"{self.plan.network}-random")

    def _train_gflops(self, stage: int) -> float | None:
        flops = self.sections.get("flops", {})
        return flops["result"][f"stage{stage}"]["train_gflops"] if flops.get("ok") else None

    def _train(self, name: str) -> dict[str, Any]:
        stage, precision = TRAIN_SECTIONS[name]
        p, rows = self.plan, []
        gflops = self._train_gflops(stage)
        with training.runner_for(self._get_task(stage), self.device, p.height, p.width) as run:
            run.precision = precision
            for on in (False, True):
                training.set_checkpointing(run.task, on)
                row: dict[str, Any] = {"checkpointing": on}
                try:
                    row.update(
                        training.search_and_time(
                            run, p.max_batch, p.search_seconds, p.timed_steps, gflops or 0.0
                        )
                    )
                except Exception as error:  # the other row still runs
                    row["error"] = f"checkpointing {on}: {type(error).__name__}: {error}"
                if "error" in row:
                    run.reset()  # gradients and batch of the failed step
                if gflops is None:
                    row["tflops"] = None
                rows.append(row)
            training.set_checkpointing(run.task, False)
        return {"stage": stage, "precision": precision, "unet": "eager", "rows": rows}

    def _compile(self, name: str) -> dict[str, Any]:
        stage, precision = COMPILE_SECTIONS[name]
        p, gflops = self.plan, self._train_gflops(stage)
        eager = self.sections.get(f"train_stage{stage}_{precision}", {}).get("result") or {}
        found = [r.get("largest_batch") for r in eager.get("rows", []) if not r["checkpointing"]]
        task = self._get_task(stage, p.compile_backend)
        with training.runner_for(task, self.device, p.height, p.width) as run:
            run.precision = precision
            if found and found[0]:
                row = training.timed_at_most(run, found[0], p.timed_steps, gflops or 0.0)
            else:  # no eager answer to start from: search with the compiled U-Net
                row = training.search_and_time(
                    run, p.max_batch, p.search_seconds, p.timed_steps, gflops or 0.0
                )
        row.update(
            checkpointing=False,
            compile_seconds=row["first_step_s"],
            eager_largest_batch=found[0] if found else None,
        )
        if gflops is None:
            row["tflops"] = None
        return {"stage": stage, "precision": precision, "rows": [row],
                "unet": f"compiled ({p.compile_backend})"}  # fmt: skip

    def _eval(self, _: str) -> dict[str, Any]:
        p, task = self.plan, self._get_task(2)
        rows = [inference.eval_images_per_s(task, self.device, p.height, p.width,
                                            p.eval_images, p.eval_batch, precision)
                for precision in ("32", "bf16-mixed")]  # fmt: skip
        return {"rows": rows}

    def _predict(self, _: str) -> dict[str, Any]:
        p, task = self.plan, self._get_task(2)
        rows = [inference.predict_latency(task, self.device, p.predict_input, p.predict_res,
                                          p.predict_repeats, precision)
                for precision in ("32", "bf16-mixed")]  # fmt: skip
        return {"rows": rows}

    # ---- one task at a time on the device ------------------------------------------------
    def _get_task(self, stage: int, compile_backend: str | None = None):
        """The stage's task (kept for the next section that asks for the same one; another
        is built only after this one has left the device, so that peak memory is one task's)."""
        key = (stage, compile_backend)
        if self._task is None or self._task[0] != key:
            self._drop_task()
            folder = self.sections["network"]["result"]["folder"]
            task = training.build_task(stage, folder, self.encoder, compile_backend)
            self._task = (key, task)
        return self._task[1].train()

    def _drop_task(self) -> None:
        self._task = None
        release_memory(self.device)
