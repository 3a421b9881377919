"""Hub-ready exports: the model card every export carries (metadata, training facts, usage
snippets executed as written, evaluation results), the card rewrite after evaluation and the
push tool's refusals and offline failure."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import cli_args, free_port
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from dm_lightning.baselines.e2e_ft import E2EFT
from dm_lightning.baselines.marigold_task import Marigold
from dm_lightning.cli import run_cli
from dm_lightning.evaluation.scoring import METRIC_NAMES
from dm_lightning.hub.eval_results import EVAL_FILE, read_eval_results
from dm_lightning.hub.model_card import (
    CARD_FILE,
    TAGS,
    CardChoices,
    build_model_card,
    write_model_card,
)
from dm_lightning.hub.push import check_repo_name, is_bare_depthmaster, suggested_repo
from dm_lightning.hub.training_facts import CONFIG_FILE, SD2
from dm_lightning.hub.usage import diffusers_usage

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))
import model_card as model_card_tool  # noqa: E402
import push_to_hub  # noqa: E402


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_model, data_config) -> Path:
    """The run folder of a 2-step tiny stage-1 fit (its export carries the card)."""
    root = tmp_path_factory.mktemp("card_runs")
    configs = [CONFIGS / "tiny" / "stage1.yaml", data_config]
    cli = run_cli(cli_args("fit", configs, tiny_model, root, trainer__max_steps=2))
    return Path(cli.trainer.log_dir)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_export_carries_a_card_with_its_metadata_and_training(fitted, tiny_model):
    export = fitted / "export"
    card = ModelCard.load(export / CARD_FILE)
    data = card.data
    assert data.library_name == "diffusers"  # every export is a diffusers pipeline folder
    assert data.pipeline_tag == "depth-estimation"
    assert data.license == "apache-2.0"  # the tiny model is no SD-2 derivative
    assert data.base_model is None  # started from a local folder without a card
    assert data.tags == TAGS
    assert data.eval_results is None  # not evaluated yet
    # The run's config travels with the export, byte for byte, and is shown in full.
    assert (export / CONFIG_FILE).read_bytes() == (fitted / "config.yaml").read_bytes()
    assert (fitted / "config.yaml").read_text().rstrip() in card.text
    text = card.text
    assert text.lstrip().startswith("# DM-Lightning DepthMaster (stage 1): single-step diffusion")
    assert "Not to be confused with PolyU-VCLab's **DepthMaster** (2026)" in text
    assert "- Optimizer steps trained: 2." in text
    assert "- Target space: `sqrt_disparity`" in text
    assert f"- Started from: `{tiny_model}`." in text
    assert "`synthetic_indoor` (p = 0.9), `synthetic_outdoor` (p = 0.1)" in text
    assert "| learning rate | `0.001` |" in text
    assert ".tmp-" not in text  # the snippets name the final folder, not the temporary one


def test_card_of_a_recipe_run_names_sd2_and_the_datasets(fitted, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(fitted / "export", export)
    config = yaml.safe_load((fitted / "config.yaml").read_text())
    config["model"]["init_args"]["model_path"] = SD2
    config["data"]["init_args"]["train"] = [
        {"name": "hypersim", "shards": "shards/hypersim/train-*.tar", "probability": 0.9},
        {"name": "vkitti", "shards": "shards/vkitti/train-*.tar", "probability": 0.1},
    ]
    run_config = tmp_path / "config.yaml"
    run_config.write_text(yaml.safe_dump(config))
    write_model_card(export, run_config)
    data = ModelCard.load(export / CARD_FILE).data
    assert data.base_model == SD2
    assert data.license == "openrail++"  # SD-2's licence carries over to derived weights
    assert data.datasets == ["Hypersim", "Virtual KITTI 2"]
    # A stage-2 run started from this export inherits its recorded base model.
    config["model"]["init_args"]["model_path"] = str(export)
    run_config.write_text(yaml.safe_dump(config))
    stage2 = tmp_path / "stage2"
    shutil.copytree(fitted / "export", stage2)
    write_model_card(stage2, run_config)
    assert ModelCard.load(stage2 / CARD_FILE).data.base_model == SD2


def test_python_snippet_runs_as_written(fitted, tmp_path, monkeypatch):
    export = fitted / "export"
    text = (export / CARD_FILE).read_text()
    (snippet,) = [s for s in code_blocks(text, "python") if "load_depthmaster" in s]
    rgb = np.random.default_rng(0).integers(0, 255, (61, 93, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)  # the snippet opens "photo.jpg"
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    depth = scope["depth"]
    assert depth.shape == (61, 93) and depth.dtype == torch.float32
    assert 0.0 <= float(depth.min()) <= float(depth.max()) <= 1.0
    # It ran this export (its weights) at the resolution the export records.
    res = json.loads((export / "dm_lightning.json").read_text())["processing_res"]
    assert f"model.predict(rgb, processing_res={res})" in snippet
    weights = load_file(str(export / "unet" / "diffusion_pytorch_model.safetensors"))
    loaded = scope["model"].unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_cli_snippet_runs_as_written(fitted, tmp_path, monkeypatch, capsys):
    (command,) = code_blocks((fitted / "export" / CARD_FILE).read_text(), "bash")
    args = shlex.split(command.replace("\\\n", " "))
    assert args[0] == "dm-lightning"
    monkeypatch.chdir(tmp_path)  # configs/, photos/ and depth/ of the snippet are relative
    (tmp_path / "configs").symlink_to(CONFIGS)
    (tmp_path / "photos").mkdir()
    rgb = np.random.default_rng(1).integers(0, 255, (40, 72, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photos" / "a.png")
    run_cli(args[1:])
    depth = np.load(tmp_path / "depth" / "a.npy")
    assert depth.shape == (40, 72) and 0.0 <= depth.min() <= depth.max() <= 1.0
    assert "wrote 1 depth map to depth," in capsys.readouterr().out


def test_diffusers_snippet_only_with_model_index(fitted, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(fitted / "export", export)
    assert (export / "model_index.json").is_file()  # every export is a diffusers pipeline
    card = build_model_card(export, CardChoices(model_ref="alice/dm-lightning-depthmaster-stage1"))
    assert card.data.library_name == "diffusers"
    assert diffusers_usage("alice/dm-lightning-depthmaster-stage1") in card.text
    (export / "model_index.json").unlink()  # an export of an older dm_lightning
    card = build_model_card(export)
    assert "DiffusionPipeline" not in card.text and card.data.library_name == "dm_lightning"


def test_diffusers_snippet_runs_as_written(fitted, tmp_path, monkeypatch):
    """The card's diffusers snippet gives what its dm_lightning snippet gives."""
    snippets = code_blocks((fitted / "export" / CARD_FILE).read_text(), "python")
    (ours,) = [s for s in snippets if "load_depthmaster" in s]
    (theirs,) = [s for s in snippets if "DiffusionPipeline" in s]
    rgb = np.random.default_rng(1).integers(0, 255, (53, 75, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    scopes: list[dict] = [{}, {}]
    for code, scope in zip((ours, theirs), scopes):
        exec(compile(code, "README.md", "exec"), scope)
    depth = scopes[1]["depth"]
    assert depth.shape == (1, 53, 75, 1)  # diffusers' (N, H, W, 1) at the input's size
    np.testing.assert_array_equal(depth[0, :, :, 0], scopes[0]["depth"].numpy())


@pytest.mark.parametrize(
    "task_class, method, title, paper, tags",
    [
        (E2EFT, "e2e_ft", "E2E-FT", "arXiv:2409.11355", ["single-step", "e2e-ft"]),
        (Marigold, "marigold", "Marigold", "arXiv:2312.02145", ["marigold"]),
    ],
)
def test_baseline_card_describes_its_method_and_its_snippets_run(
    task_class, method, title, paper, tags, tiny_model, tmp_path, monkeypatch, capsys
):
    """A baseline's export card names its own method and paper, not DepthMaster's, and its
    snippets load the export with the task class that reads it (load_depthmaster refuses it)."""
    export = tmp_path / "export"
    net = task_class(str(tiny_model)).net
    net.save_pretrained(export, {"stage": task_class.__name__, "target": "depth"})
    write_model_card(export, choices=CardChoices(model_ref=str(export)))
    card = ModelCard.load(export / CARD_FILE)
    text = card.text
    assert text.lstrip().startswith(f"# DM-Lightning {title}: diffusion-based monocular")
    assert f"This is a model of the **{title}** method" in text and paper in text
    assert "DepthMaster: Taming" not in text and "PolyU-VCLab" not in text
    assert "Fourier Enhancement" not in text
    assert f"- Method: {title}, one of the baselines" in text
    assert "depthmaster" not in card.data.tags
    assert card.data.tags == ["depth-estimation", "monocular-depth", "diffusion", *tags] + [
        "dm-lightning"
    ]
    assert card.data.library_name == "dm_lightning"  # no DepthMaster pipeline in the folder
    assert suggested_repo(export, "alice") == f"alice/dm-lightning-{tags[-1]}-model-depth"

    # The Python snippet, as written: the task's network of this export.
    (snippet,) = code_blocks(text, "python")
    assert f"from dm_lightning import {task_class.__name__}" in snippet
    rgb = np.random.default_rng(2).integers(0, 255, (37, 58, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert type(scope["model"]).method == method
    depth = scope["depth"]
    assert depth.shape == (37, 58) and 0.0 <= float(depth.min()) <= float(depth.max()) <= 1.0

    # The CLI snippet, as written: predict with the baseline's task.
    (command,) = code_blocks(text, "bash")
    args = shlex.split(command.replace("\\\n", " "))
    assert args[args.index("--model") + 1] == f"dm_lightning.{task_class.__name__}"
    (tmp_path / "configs").symlink_to(CONFIGS)
    (tmp_path / "photos").mkdir()
    Image.fromarray(rgb).save(tmp_path / "photos" / "a.png")
    run_cli(args[1:])
    written = np.load(tmp_path / "depth" / "a.npy")
    assert written.shape == (37, 58) and 0.0 <= written.min() <= written.max() <= 1.0
    assert "wrote 1 depth map to depth," in capsys.readouterr().out


def report_results(model: Path) -> dict:
    """An EvaluationReport ``results.json`` (format checked in tests/test_evaluation.py)."""
    metrics = {name: 0.01 * (i + 1) + 0.0012345 for i, name in enumerate(METRIC_NAMES)}
    nyu = {
        "processing_res": 768,
        "reader": "NYUv2",
        "root": "/data/nyu",
        "images": 654,
        "crop": "eigen",
        "mask": "valid depth",
        "depth_range": [0.001, 10.0],
        "list_file": "/data/lists/nyu_test.txt",
        "list_sha256": "0123456789abcdef" * 4,
    }
    return {
        "model": str(model),
        "settings": {
            "dm_lightning": "0.1.0",
            "model": str(model),
            "target": "sqrt_disparity",
            "fit_space": "sqrt_disparity",
        },
        "benchmarks": [
            {
                "name": "nyu_test",
                "kind": "nyu",
                "num_images": 654,
                "metrics": metrics,
                "settings": nyu,
            },
            {
                "name": "tum",
                "kind": "rgbd_folder",
                "num_images": 1,
                "metrics": {**metrics, "abs_rel": 0.08761, "delta1": 0.93218},
                "settings": {"processing_res": "native", "shards": "/data/tum-{0..1}.tar"},
            },
            {"name": "empty", "kind": "kitti", "num_images": 0, "metrics": {}},
        ],
    }


def test_evaluated_card_shows_the_results(fitted, tmp_path, capsys):
    export = tmp_path / "export"
    shutil.copytree(fitted / "export", export)
    evaluation = tmp_path / "test" / "version_0" / "evaluation"
    evaluation.mkdir(parents=True)
    record = report_results(fitted / "export")  # another folder than this copy
    (evaluation / "results.json").write_text(json.dumps(record))
    assert model_card_tool.main([str(export), "--results", str(evaluation)]) == 2
    assert capsys.readouterr().err == (
        f"model_card: error: evaluation results {evaluation / 'results.json'} are of model "
        f"{fitted / 'export'}, not of {export}; pass --force if that folder holds the same "
        "weights\n"
    )
    record["model"] = str(export)
    (evaluation / "results.json").write_text(json.dumps(record))
    # The test run folder is enough: its evaluation/results.json is found.
    assert model_card_tool.main([str(export), "--results", str(evaluation.parent)]) == 0

    card = ModelCard.load(export / CARD_FILE)
    assert card.data.model_name == "dm-lightning-depthmaster-stage1-sqrt-disparity"
    index = {(r.dataset_type, r.metric_type): r for r in card.data.eval_results}
    assert len(index) == 4  # 2 metrics x 2 benchmarks with images; "empty" has none
    nyu, tum = record["benchmarks"][0]["metrics"], record["benchmarks"][1]["metrics"]
    assert index[("nyu", "abs_rel")].metric_value == round(100 * nyu["abs_rel"], 2) == 1.12
    assert index[("nyu", "delta1")].metric_value == round(100 * nyu["delta1"], 2) == 6.12
    assert index[("nyu", "delta1")].dataset_name == "NYUv2 (nyu_test)"
    # A generic kind (rgbd_folder) is named by its split.
    assert index[("tum", "abs_rel")].metric_value == round(100 * tum["abs_rel"], 2) == 8.76
    assert index[("tum", "delta1")].metric_value == round(100 * tum["delta1"], 2) == 93.22
    header = "| AbsRel / δ1 (x100) | nyu_test (654) | tum (1) | empty (0) |"
    assert header in card.text
    assert "| this model | 1.1 / 6.1 | 8.8 / 93.2 | – |" in card.text
    assert "| DepthMaster (paper) | 5.0 / 97.2 | – | 8.2 / 93.7 |" in card.text
    # Under the table, the settings that produced the numbers (as results.md shows them),
    # without the evaluating machine's path of the model.
    assert "Settings: dm_lightning 0.1.0; fit (alignment) space **sqrt_disparity**.\n" in card.text
    assert (
        "| nyu_test | `nyu_test.txt` (sha256 0123456789ab) | 654 | 768 | eigen | valid depth "
        "| 0.001 .. 10 |" in card.text
    )
    assert "| tum | shards `/data/tum-{0..1}.tar` | – | native | – | – | – |" in card.text
    assert "| empty | – | – | – | – | – | – |" in card.text
    assert str(export) not in card.text.split("## Evaluation")[1]
    # A rewrite without --results (e.g. before a push) keeps the stored results.
    stored = (export / EVAL_FILE).read_bytes()
    write_model_card(export, choices=CardChoices(model_ref="alice/x"))
    assert ModelCard.load(export / CARD_FILE).data.eval_results == card.data.eval_results
    assert (export / EVAL_FILE).read_bytes() == stored


def test_results_formats_of_the_recipe(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    flat = {"test/nyu/abs_rel": 0.05, "test/nyu/delta1": 0.97, "test/nyu/num_images": 654.0}
    (tmp_path / "test_metrics.json").write_text(json.dumps(flat))
    results = read_eval_results(tmp_path / "test_metrics.json")
    assert [(b.name, b.num_images, b.metrics) for b in results.benchmarks] == [
        ("nyu", 654, {"abs_rel": 0.05, "delta1": 0.97})
    ]
    recipe = {
        "input": {"model": "stabilityai/stable-diffusion-2", "metrics": {"test/nyu/abs_rel": 0.9}},
        "stage2": {"model": str(export), "global_step": 10, "metrics": flat},
    }
    (tmp_path / "results.json").write_text(json.dumps(recipe))
    chosen = read_eval_results(tmp_path, export)
    assert chosen.model == str(export) and chosen.benchmarks[0].metrics["abs_rel"] == 0.05
    with pytest.raises(ValueError, match=r"hold no results of .*other.*stage2: "):
        read_eval_results(tmp_path, tmp_path / "other")


@pytest.mark.parametrize(
    "name, bare",
    [
        ("DepthMaster", True),
        ("depthmaster", True),
        ("Depth-Master", True),
        ("depthmaster-v2", True),
        ("DepthMaster_weights", True),
        ("dm-lightning-depthmaster-stage2-sqrt-disparity", False),
        ("depthmaster-hypersim-finetune", False),
    ],
)
def test_bare_depthmaster_names(name, bare):
    assert is_bare_depthmaster(name) is bare


def test_push_refuses_bare_names_and_folders_that_are_not_exports(fitted, tmp_path, capsys):
    assert push_to_hub.main([str(tmp_path), "--repo", "alice/dm-lightning-x"]) == 2
    err = capsys.readouterr().err
    assert err == f"push_to_hub: error: {tmp_path} is not a model export: it has no unet/ or " + (
        "vae/ (expected the folder written at the end of dm-lightning fit, e.g. "
        "runs/.../version_0/export)\n"
    )
    export = fitted / "export"
    assert push_to_hub.main([str(export), "--repo", "alice/DepthMaster"]) == 2
    assert "a bare DepthMaster name would pass for PolyU-VCLab's" in capsys.readouterr().err
    assert push_to_hub.main([str(export)]) == 2
    assert (
        "--repo is required, e.g. --repo <user>/dm-lightning-depthmaster-stage1-sqrt-disparity"
        in capsys.readouterr().err
    )
    assert check_repo_name("alice/DepthMaster", force=True) == "alice/DepthMaster"
    # The card tool's --repo (the name its snippets load) is held to the same rule.
    assert model_card_tool.main([str(export), "--repo", "alice/depth_master"]) == 2
    assert "a bare DepthMaster name would pass for" in capsys.readouterr().err


def test_push_without_network_is_one_line_and_exit_1(tiny_model, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_model, export)
    before = sorted(p.name for p in export.iterdir())
    port = free_port()  # nothing listens there: connection refused, at once
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HOME": str(tmp_path / "hf_home"),  # no stored token
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }
    env.pop("HF_TOKEN", None)
    repo = "alice/dm-lightning-depthmaster-model-sqrt-disparity"
    tool = [sys.executable, str(TOOLS / "push_to_hub.py"), str(export), "--repo", repo]
    done = subprocess.run(tool, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback
    where = f"http://127.0.0.1:{port}"
    assert lines[0].startswith(
        f"push_to_hub: error: cannot reach the Hugging Face hub at {where} ("
    )
    assert "Connection refused" in lines[0]
    assert lines[0].endswith(
        f"nothing was uploaded from {export} (no network? check HF_ENDPOINT and proxies)"
    )
    assert sorted(p.name for p in export.iterdir()) == before  # the folder is untouched


def test_push_rewrites_the_card_for_the_repo_and_uploads_the_folder(fitted, tmp_path, monkeypatch):
    """The hub calls replaced by recorders (no network here): create_repo, then the card
    loads the repository, then upload_folder of the whole folder."""
    from huggingface_hub import HfApi

    export = tmp_path / "export"
    shutil.copytree(fitted / "export", export)
    calls: list[tuple] = []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        calls.append(("create_repo", repo_id, private, exist_ok, (export / CARD_FILE).read_text()))

    def upload_folder(self, repo_id, folder_path, commit_message):
        calls.append(("upload_folder", repo_id, Path(folder_path)))
        return type("CommitInfo", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    repo = "alice/dm-lightning-depthmaster-stage1-sqrt-disparity"
    assert push_to_hub.main([str(export), "--repo", repo, "--private"]) == 0
    (created, uploaded) = calls
    assert created[:4] == ("create_repo", repo, True, True)
    assert repo not in created[4]  # the card was still the local one when the repo was made
    assert uploaded == ("upload_folder", repo, export)
    card = (export / CARD_FILE).read_text()
    assert f'load_depthmaster("{repo}")' in card
    assert f"--model.init_args.model_path {repo} " in card
