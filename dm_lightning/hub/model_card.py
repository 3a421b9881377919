"""The model card (``README.md``) of an export folder, built with huggingface_hub's
``ModelCard`` / ``ModelCardData``.

:func:`write_model_card` writes it from what the folder records
(:mod:`~dm_lightning.hub.training_facts`) and, once the model has been evaluated, from its
results (:mod:`~dm_lightning.hub.eval_results`, stored in the folder as
:data:`~dm_lightning.hub.eval_results.EVAL_FILE` so a later rewrite keeps them). The export
writes it (``ExportDepthMaster``); ``tools/model_card.py`` rewrites it after an evaluation and
``tools/push_to_hub.py`` before an upload (with the repository id in its usage snippets,
:mod:`~dm_lightning.hub.usage`).

Metadata: ``library_name`` is ``diffusers`` when the folder has a ``model_index.json`` (then
``DiffusionPipeline.from_pretrained`` loads it, and the hub's own snippet and download counts
work), else ``dm_lightning``: a hub "Use with diffusers" button on a folder diffusers cannot
load would hand users code that fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from dm_lightning.evaluation.settings import settings_markdown
from dm_lightning.evaluation.tables import markdown_table, results_table
from dm_lightning.hub.eval_results import EVAL_FILE, EvalResults
from dm_lightning.hub.methods import DEPTHMASTER, MethodCard, method_card
from dm_lightning.hub.training_facts import (
    TrainingFacts,
    copy_run_config,
    read_training_facts,
)
from dm_lightning.hub.usage import cli_usage, diffusers_usage, python_usage

CARD_FILE = "README.md"
PIPELINE_INDEX = "model_index.json"
TAGS = [
    "depth-estimation",
    "monocular-depth",
    "diffusion",
    "single-step",
    "depthmaster",
    "dm-lightning",
]
# Run settings of an evaluation that are paths on the evaluating machine: the card's own model
# (its folder or hub id is what the card is about), left out of its settings line.
LOCAL_PATHS = ("model", "unet", "predictions")

# The model-index metrics: (metric key, hub metric type, shown name). Values are x100 (as the
# paper reports them), rounded to 2 decimals.
INDEX_METRICS = (("abs_rel", "abs_rel", "AbsRel (x100)"), ("delta1", "delta1", "δ1 (x100)"))

TARGET_WORDS = {
    "sqrt_disparity": "normalised square-root disparity",
    "disparity": "normalised disparity",
    "depth": "normalised depth",
}

NOT_THIS = (
    "Not to be confused with PolyU-VCLab's **DepthMaster** (2026), an unrelated model for "
    "panoramic *metric* depth: this model predicts *relative* depth of ordinary perspective images."
)


def default_license(base_model: str | None) -> str:
    """``openrail++`` for weights fine-tuned from Stable Diffusion 2 (its CreativeML Open
    RAIL++-M licence carries over to derived weights), else the code's ``apache-2.0``."""
    return (
        "openrail++"
        if base_model and base_model.startswith("stabilityai/stable-diffusion-2")
        else "apache-2.0"
    )


def card_tags(method: MethodCard) -> list[str]:
    """The card's tags: :data:`TAGS` for DepthMaster; a baseline's own name instead of
    ``depthmaster``, and no ``single-step`` for a method that samples (Marigold)."""
    if method is DEPTHMASTER:
        return list(TAGS)
    tags = [tag for tag in TAGS if tag not in ("depthmaster", "single-step")]
    return tags[:3] + (["single-step"] if method.single_step else []) + [method.slug, TAGS[-1]]


def model_title(facts: TrainingFacts) -> str:
    """``dm-lightning-<method>-<stage>-<target>`` (``dm-lightning-depthmaster-stage2-sqrt-
    disparity``, ``dm-lightning-e2e-ft-model-depth``): the model-index name and the suggested
    hub repository name (never a bare "DepthMaster", see :mod:`dm_lightning.hub.push`)."""
    stage = f"stage{facts.stage}" if facts.stage else "model"
    target = facts.model.target.replace("_", "-")
    return f"dm-lightning-{method_card(facts.method).slug}-{stage}-{target}"


def _training_section(facts: TrainingFacts) -> str:
    lines = ["## Training", ""]
    stage_text = {
        1: "stage 1 of DepthMaster: the U-Net learns the depth latent from the image latent "
        "(latent MSE) with Feature Alignment of its features to a frozen DINOv2-type encoder",
        2: "stage 2 of DepthMaster: fine-tuned from a stage-1 model in pixel space through the "
        "frozen VAE decoder (MSE + gradient loss), with the Fourier Enhancement block",
    }
    if facts.method is not None:
        method = method_card(facts.method)
        lines.append(
            f"- Method: {method.name}, one of the baselines dm_lightning trains beside DepthMaster "
            f"(docs/method.md §8 of dm_lightning), trained by `{facts.task_class or method.task}`."
        )
    elif facts.stage in stage_text:
        lines.append(f"- Stage: {stage_text[facts.stage]}.")
    elif facts.task:
        lines.append(f"- Trained by: `{facts.task}`.")
    if facts.global_step is not None:
        lines.append(f"- Optimizer steps trained: {facts.global_step}.")
    target = facts.model.recorded_target
    if target:
        lines.append(f"- Target space: `{target}` ({TARGET_WORDS.get(target, target)}).")
    if facts.started_from:
        lines.append(f"- Started from: `{facts.started_from}`.")
    if facts.sources:
        parts = [
            f"`{s.name}`" + (f" (p = {s.probability})" if s.probability is not None else "")
            for s in facts.sources
        ]
        lines.append(f"- Training data: {', '.join(parts)}.")
    if facts.method is None:
        fourier = "yes" if facts.fourier else "no"
        lines.append(f"- Fourier Enhancement block in the U-Net: {fourier}.")
    if facts.settings:
        rows = ([label, f"`{value}`"] for label, value in facts.settings)
        lines += ["", *markdown_table(["setting", "value"], rows)]
    if facts.config_text:
        lines += [
            "",
            "<details><summary>The run's full config (LightningCLI <code>config.yaml</code>, "
            "also in this folder as <code>dm_lightning_config.yaml</code>)</summary>",
            "",
            "```yaml",
            facts.config_text.rstrip(),
            "```",
            "",
            "</details>",
        ]
    else:
        lines += ["", "The run's config was not found when this card was written."]
    return "\n".join(lines) + "\n"


def _eval_section(results: EvalResults) -> str:
    evaluated = {b.name: b for b in results.benchmarks}
    ours = {
        n: (b.metrics["abs_rel"], b.metrics["delta1"])
        if b.num_images and {"abs_rel", "delta1"} <= set(b.metrics)
        else None
        for n, b in evaluated.items()
    }
    table = results_table(
        ours,
        {n: b.kind for n, b in evaluated.items()},
        {n: b.num_images for n, b in evaluated.items()},
    )
    section = (
        "## Evaluation\n\n"
        "Affine-invariant (scale and shift fitted per image, docs/method.md §6 of dm_lightning), "
        "zero-shot on benchmarks outside the training data; AbsRel (lower is better) / δ1 "
        "(higher is better), x100. Columns: test split (images). The paper rows are published "
        "zero-shot numbers, for reference.\n\n"
        f"{table}"
    )
    if not results.settings:
        return section  # results that did not record their settings (the recipe's files)
    # What produced the numbers, as results.md shows it.
    run = {k: v for k, v in results.settings.items() if k not in LOCAL_PATHS}
    return section + "\n" + settings_markdown(run, {n: b.settings for n, b in evaluated.items()})


def eval_results_metadata(results: EvalResults) -> list[EvalResult]:
    """The card's ``model-index`` entries: AbsRel and δ1 (x100, 2 decimals) per benchmark with
    evaluated images."""
    entries = []
    for bench in results.benchmarks:
        for key, metric_type, name in INDEX_METRICS:
            if bench.num_images and key in bench.metrics:
                entries.append(
                    EvalResult(
                        task_type="depth-estimation",
                        task_name="Monocular relative depth estimation",
                        dataset_type=bench.dataset_type,
                        dataset_name=bench.pretty_name,
                        dataset_split="test",
                        metric_type=metric_type,
                        metric_name=name,
                        metric_value=round(100.0 * bench.metrics[key], 2),
                    )
                )
    return entries


@dataclass(frozen=True)
class CardChoices:
    """What a card shows beyond what its folder records; None takes the default.

    Attributes:
        model_ref: what the usage snippets load: a hub id or the folder's final path
            (default the folder).
        results: evaluation results to show (table and ``model-index``); default none
            (:func:`write_model_card`: those stored in the folder earlier).
        base_model: hub id of the base weights; default the recorded one.
        license: licence id; default :func:`default_license` of the base model.
    """

    model_ref: str | None = None
    results: EvalResults | None = None
    base_model: str | None = None
    license: str | None = None


def build_model_card(folder: Path, choices: CardChoices = CardChoices()) -> ModelCard:
    """The card of export ``folder`` (``unet/``, ``vae/``, ``dm_lightning.json``, optionally
    ``dm_lightning_config.yaml`` and a diffusers ``model_index.json``), shown as ``choices``
    say."""
    folder = Path(folder)
    facts = read_training_facts(folder)
    results, license = choices.results, choices.license
    base = choices.base_model or facts.base_model
    ref = choices.model_ref or str(folder)
    diffusers_ready = (folder / PIPELINE_INDEX).is_file()
    method = method_card(facts.method)
    index = eval_results_metadata(results) if results is not None else []
    data = ModelCardData(
        library_name="diffusers" if diffusers_ready else "dm_lightning",
        pipeline_tag="depth-estimation",
        license=license or default_license(base),
        base_model=base,
        datasets=facts.datasets or None,
        tags=card_tags(method),
        model_name=model_title(facts) if index else None,
        eval_results=index or None,
    )
    stage = f"stage {facts.stage}" if facts.stage else "model"
    near = "1 = near, 0 = far" if facts.model.near_is_one else "1 = far, 0 = near"
    target = TARGET_WORDS.get(facts.model.target, facts.model.target)
    if method is DEPTHMASTER:
        title = f"# DM-Lightning DepthMaster ({stage}): single-step diffusion monocular "
        title += "relative depth"
        what = f"This is a model of the **DepthMaster** method ({method.paper}), trained "
        intro = [f"{what}with dm_lightning: {method.summary}.", "", NOT_THIS]
    else:
        title = f"# DM-Lightning {method.name}: diffusion-based monocular relative depth"
        intro = [
            f"This is a model of the **{method.name}** method ({method.paper}), trained with "
            f"dm_lightning as a baseline beside DepthMaster, on the same data and protocol: "
            f"{method.summary}."
        ]
    body = [
        title,
        "",
        *intro,
        "",
        "## What it predicts",
        "",
        f"Relative (affine-invariant) depth of one RGB image, at the image's size: {target} in "
        f"[0, 1], {near}. It is known up to a scale and shift; fit them to a few known depths "
        "for metres (dm_lightning's `tools/metric_depth.py`). The network runs at a long edge of "
        f"{facts.model.processing_res} pixels by default.",
        "",
        _training_section(facts),
        "## Usage",
        "",
        "With dm_lightning installed (Python):",
        "",
        "```python",
        python_usage(ref, facts).rstrip(),
        "```",
        "",
        "A folder (searched recursively) or glob of images, from a dm_lightning checkout: per "
        "image a float32 `.npy` in [0, 1], a 16-bit PNG and a colour PNG.",
        "",
        "```bash",
        cli_usage(ref, facts).rstrip(),
        "```",
        "",
    ]
    if diffusers_ready:
        body += ["With diffusers only:", "", "```python", diffusers_usage(ref).rstrip(), "```", ""]
    if results is not None:
        body += [_eval_section(results)]
    body += [
        "## Limitations",
        "",
        "- Relative depth only: no metric scale, no camera intrinsics.",
        "- Trained on the data listed above only; check it on images like yours.",
        "",
        "## Citation",
        "",
        f"The method: {method.paper}.",
        "",
    ]
    template = "---\n{{ card_data }}\n---\n\n{{ body }}"
    return ModelCard.from_template(data, template_str=template, body="\n".join(body))


def write_model_card(
    folder: Path, run_config: Path | None = None, choices: CardChoices = CardChoices()
) -> Path:
    """Write ``folder/README.md`` (and keep its inputs in the folder).

    ``run_config`` (the run's ``config.yaml``) is copied in as ``dm_lightning_config.yaml``;
    ``choices.results`` are stored as :data:`~dm_lightning.hub.eval_results.EVAL_FILE`.
    Without results, those stored earlier are shown again; the base model and licence default
    to the previous card's when the folder does not record them.

    Returns:
        The card's path.
    """
    folder = Path(folder)
    copy_run_config(folder, run_config)
    stored = folder / EVAL_FILE
    results = choices.results
    if results is not None:
        stored.write_text(json.dumps(results.to_json(), indent=2) + "\n")
    elif stored.is_file():
        results = EvalResults.from_json(json.loads(stored.read_text()), str(stored))
    previous = _previous_metadata(folder / CARD_FILE)
    base_model = (
        choices.base_model or read_training_facts(folder).base_model or previous.get("base_model")
    )
    license = choices.license
    if license is None and previous.get("license") != default_license(previous.get("base_model")):
        license = previous.get("license")  # chosen by hand (--license) for the previous card
    card = build_model_card(
        folder, replace(choices, results=results, base_model=base_model, license=license)
    )
    path = folder / CARD_FILE
    card.save(path)
    return path


def _previous_metadata(card: Path) -> dict[str, Any]:
    if not card.is_file():
        return {}
    try:
        return ModelCard.load(card).data.to_dict()
    except Exception:  # a hand-written README: nothing to keep
        return {}
