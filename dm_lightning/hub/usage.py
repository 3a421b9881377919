"""The usage snippets of a model card: Python (dm_lightning's loader, or a baseline's task),
the ``dm-lightning predict`` command and, for a folder diffusers can load, diffusers'
``DiffusionPipeline``. tests/test_model_card.py runs them against each other."""

from __future__ import annotations

import json
import shlex

from dm_lightning.hub.methods import method_card
from dm_lightning.hub.training_facts import TrainingFacts

DEFAULT_IMAGE = "photo.jpg"


def python_usage(model_ref: str, facts: TrainingFacts, image: str = DEFAULT_IMAGE) -> str:
    """The Python usage snippet: dm_lightning's ``load_depthmaster(...).predict(...)``, or for a
    baseline its task's network (``E2EFT(...).net``, the loader that reads its export)."""
    res = facts.model.processing_res
    near = "1 = near" if facts.model.near_is_one else "1 = far"
    if facts.method is None:
        name, load = "load_depthmaster", f"load_depthmaster({json.dumps(model_ref)})"
    else:
        name = _task_name(facts)
        load = f"{name}({json.dumps(model_ref)}).net"
    return f"""import numpy as np
import torch
from PIL import Image, ImageOps

from dm_lightning import {name}

model = {load}.eval()
image = ImageOps.exif_transpose(Image.open({json.dumps(image)})).convert("RGB")
rgb = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
depth = model.predict(rgb, processing_res={res})[0, 0]  # (H, W) float in [0, 1], {near}
"""


def _task_name(facts: TrainingFacts) -> str:
    """The class name of the task that loads a baseline's export (``E2EFT``)."""
    return (facts.task_class or method_card(facts.method).task).rpartition(".")[2]


def cli_usage(model_ref: str, facts: TrainingFacts | None = None) -> str:
    """The ``dm-lightning predict`` command (run from a dm_lightning checkout: its config); a
    baseline's export names its task class."""
    task = (
        f"    --model dm_lightning.{_task_name(facts)} \\\n"
        if facts is not None and facts.method is not None
        else ""
    )
    return (
        "dm-lightning predict --config configs/predict.yaml \\\n"
        + task
        + f"    --model.init_args.model_path {shlex.quote(model_ref)} \\\n"
        "    --data.init_args.predict photos/ \\\n"
        "    --trainer.callbacks.init_args.output_dir depth/\n"
    )


def diffusers_usage(model_ref: str) -> str:
    """The diffusers snippet, shown only when the folder has ``model_index.json`` (every export
    since the pipeline landed; ``depth`` is DepthMasterPipeline's (1, H, W, 1) prediction in
    [0, 1]). tests/test_model_card.py runs it against the dm_lightning snippet."""
    return f"""from diffusers import DiffusionPipeline
from PIL import Image

pipe = DiffusionPipeline.from_pretrained({json.dumps(model_ref)}, trust_remote_code=True)
depth = pipe(Image.open("photo.jpg")).prediction
"""
