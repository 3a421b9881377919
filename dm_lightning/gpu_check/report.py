"""What the GPU check writes: the device it ran on, and its results as JSON and as Markdown
tables for BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from dm_lightning.evaluation.tables import markdown_table


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    """Name, memory and software versions of ``device``; nothing is assumed about which GPU
    (the memory comes from ``torch.cuda.get_device_properties``)."""
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        "lightning": _version("lightning"),
        "diffusers": _version("diffusers"),
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            memory_gib=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            # fp32 rows run as the project does: it sets neither (TF32 off for matmuls).
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    else:
        info.update(name=platform.processor() or platform.machine(), memory_gib=None)
    return info


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _training_rows(sections: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, section in sections.items():
        result = section.get("result") or {}
        if not name.startswith(("train_", "compile_")) or not result:
            continue
        unet = result.get("unet", "eager")
        # A row that failed is left out here; the status table gives its error.
        for row in (r for r in result.get("rows", []) if "error" not in r):
            if "largest_batch" in row:
                batch = f"{row['largest_batch']} (of {row['searched_up_to']}"
                batch += ", search capped)" if row["search_capped"] else ")"
                if row["batch"] != row["largest_batch"]:
                    batch += f", timed at {row['batch']}"
            else:
                batch = f"timed at {row['batch']} (eager's largest: {row['eager_largest_batch']})"
            rows.append(
                [
                    result["stage"],
                    result["precision"],
                    unet,
                    "on" if row["checkpointing"] else "off",
                    batch,
                    _num(row["samples_per_s"]),
                    _num(row["peak_memory_gb"]),
                    "-" if row.get("tflops") is None else format(row["tflops"], ".3g"),
                ]
            )
    return rows


def markdown(results: dict[str, Any]) -> str:
    """Markdown tables of ``results`` (the JSON of :func:`write`): training rows, evaluation,
    predict, the ddp fit, and every section's status (failed and skipped ones with their
    error)."""
    d, s, plan = results["device"], results["sections"], results["plan"]
    memory = f", {d['memory_gib']:.1f} GiB" if d.get("memory_gib") else ""
    cuda = f", CUDA {d['cuda']}" if d.get("cuda") else ""
    h, w = plan["height"], plan["width"]
    training = ["stage", "precision", "U-Net", "checkpointing", f"largest micro-batch at {h}x{w}"]
    training += ["samples/s", "peak memory (GiB)", "TFLOP/s (model FLOPs)"]
    out = [
        f"GPU check ({results['mode']}): {d['name']}{memory}, torch {d['torch']}{cuda}, "
        f"{results['network']} network, {results['started']}",
        "",
        *markdown_table(training, _training_rows(s)),
    ]
    ev = s.get("eval", {})
    if ev.get("ok"):
        header = [f"evaluation at {h}x{w} (predict + metrics on the device)", "precision"]
        rows = (
            [f"{r['images']} images, batch {r['batch']}", r["precision"], _num(r["images_per_s"])]
            for r in ev["result"]["rows"]
        )
        out += ["", *markdown_table([*header, "images/s"], rows)]
    pr = s.get("predict", {})
    if pr.get("ok"):
        rows = (
            [
                f"{r['input'][0]}x{r['input'][1]} at long edge {r['processing_res']} "
                f"(network at {r['working_size'][0]}x{r['working_size'][1]})",
                r["precision"],
                _num(r["latency_s"], 3),
            ]
            for r in pr["result"]["rows"]
        )
        header = ["predict, one photo", "precision", "latency (s, median)"]
        out += ["", *markdown_table(header, rows)]
    ddp = s.get("ddp_fit", {})
    if ddp.get("ok"):
        r = ddp["result"]
        header = ["ddp fit (tiny stage 1, 1 device)", "backend", "steps", "exit code", "s"]
        row = [f"{r['strategy']} on {r['device']}", r["backend"], r["global_step"]]
        row += [r["exit_code"], _num(r["seconds"], 1)]
        out += ["", *markdown_table(header, [row])]
    statuses = (
        [
            name,
            "ok" if section["ok"] else f"FAILED: {section['error']}".replace("|", "/"),
            _num(section["seconds"], 1),
        ]
        for name, section in s.items()
    )
    out += ["", *markdown_table(["section", "status", "s"], statuses)]
    return "\n".join(out) + "\n"


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``out/gpu_check.json`` and ``out/gpu_check.md``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu_check.json", out / "gpu_check.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path
