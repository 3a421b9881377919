"""The dm-lightning CLI end to end on tiny data: fit stage 1, fit stage 2 from its export,
test and predict, through the shipped configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from helpers import cli_args
from PIL import Image
from safetensors import safe_open

from dm_lightning.cli import run_cli as main

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def _fit(stage: str, data_config: Path, root: Path, model_path: Path, steps: int) -> tuple:
    configs = [CONFIGS / "tiny" / f"{stage}.yaml", data_config]
    cli = main(cli_args("fit", configs, model_path, root, trainer__max_steps=steps))
    return cli, Path(cli.trainer.log_dir)


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory, tiny_model, data_config):
    root = tmp_path_factory.mktemp("runs")
    cli1, dir1 = _fit("stage1", data_config, root, tiny_model, steps=4)
    cli2, dir2 = _fit("stage2", data_config, root, dir1 / "export", steps=3)
    return {"root": root, "cli1": cli1, "dir1": dir1, "cli2": cli2, "dir2": dir2}


def test_stage1_fit_exports_diffusers_folder(stage_runs):
    cli, run = stage_runs["cli1"], stage_runs["dir1"]
    assert cli.trainer.global_step == 4
    export = run / "export"
    assert json.loads((run / "export.json").read_text())["export"] == str(export.resolve())
    for rel in (
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "empty_prompt_embedding.safetensors",
        "dm_lightning.json",
    ):
        assert (export / rel).is_file(), rel
    with safe_open(str(export / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert not any(k.startswith("fftblock.") for k in f.keys())
    # Plain diffusers loads the exported U-Net: the trained weights, not the initial ones.
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel.from_pretrained(export / "unet")
    trained = cli.model.net.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in plain.state_dict().items())
    # Metrics of both validation splits were logged, and the first drives val/abs_rel.
    metrics = cli.trainer.callback_metrics
    assert 0.0 < float(metrics["val/synthetic_indoor/abs_rel"]) < 10.0
    assert float(metrics["val/abs_rel"]) == float(metrics["val/synthetic_indoor/abs_rel"])
    assert float(metrics["val/synthetic_outdoor/num_images"]) == 8
    assert "train/fa" in metrics and "train/latent_mse" in metrics
    # TensorBoard event file and a checkpoint without the frozen VAE / encoder.
    assert list(run.glob("events.out.tfevents.*"))
    ckpt = next((run / "checkpoints").glob("last*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("net.unet.") for k in state)
    assert any(k.startswith("alignment.projector.") for k in state)
    assert not any(k.startswith(("net.vae.", "encoder.")) for k in state)


def test_stage2_starts_from_stage1_export(stage_runs):
    cli, run = stage_runs["cli2"], stage_runs["dir2"]
    # A fresh optimizer and step counter, not stage 1's.
    assert cli.trainer.global_step == 3
    assert cli.model.hparams.model_path == str(stage_runs["dir1"] / "export")
    with safe_open(str(run / "export" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {
        "fftblock.norm.weight",
        "fftblock.conv_f1.weight",
        "fftblock.conv_f4.weight",
        "fftblock.conv_s2.weight",
        "fftblock.fuse.weight",
    } <= keys
    metrics = cli.trainer.callback_metrics
    assert "train/pixel_mse" in metrics and "train/gradient" in metrics
    # Its model card (tests/test_model_card.py) describes stage 2 and where it started.
    card = (run / "export" / "README.md").read_text()
    assert "# DM-Lightning DepthMaster (stage 2): single-step diffusion" in card
    assert "- Optimizer steps trained: 3.\n" in card
    assert f"- Started from: `{stage_runs['dir1'] / 'export'}`.\n" in card
    assert "- Fourier Enhancement block in the U-Net: yes.\n" in card


def test_test_and_predict_on_export(stage_runs, data_config, tmp_path, capsys):
    export = stage_runs["dir2"] / "export"
    configs = [CONFIGS / "tiny" / "eval.yaml", data_config]
    cli = main(cli_args("test", configs, export, tmp_path))
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/synthetic_indoor/num_images"]) == 8
    assert float(metrics["test/synthetic_outdoor/num_images"]) == 8
    assert 0.0 <= float(metrics["test/synthetic_outdoor/delta1"]) <= 1.0

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(images / "b.jpg")
    (images / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        images / "sub" / "d.png"
    )
    (images / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # unreadable: skipped
    out = tmp_path / "pred"
    main(
        cli_args(
            "predict",
            [CONFIGS / "predict.yaml"],
            export,
            data__init_args__predict=images,
            trainer__callbacks__init_args__output_dir=out,
            # where LightningCLI saves config.yaml when there is no logger
            trainer__default_root_dir=tmp_path,
        )
    )
    a = np.asarray(Image.open(out / "a.png"))
    b = np.asarray(Image.open(out / "b.png"))
    assert a.shape == (50, 70) and a.dtype == np.uint16
    assert b.shape == (64, 96)
    assert np.asarray(Image.open(out / "sub" / "d.png")).shape == (40, 40)
    assert not (out / "c.png").exists()
    printed = capsys.readouterr().out
    assert f"wrote 3 depth maps to {out}, skipped 1 unreadable file" in printed


def _config_sets() -> list[list[Path]]:
    data = CONFIGS / "data" / "synthetic.yaml"
    model_free = CONFIGS / "tiny" / "eval.yaml"
    evaluation = CONFIGS / "eval" / "depthmaster.yaml"
    sets = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        rel = path.relative_to(CONFIGS)
        if rel.parts[0] == "eval" and path != evaluation:
            sets.append([evaluation, path])
        elif rel.parts[0] in ("data", "trainer"):
            sets.append([model_free, path])  # components, checked on a whole config
        elif rel.parts[0] in ("encoders", "ablations"):
            continue  # overlays, checked on top of the recipe in test_overlay_configs
        else:
            sets.append([path, data])
    return sets


@pytest.mark.parametrize(
    "configs", _config_sets(), ids=lambda c: "+".join(str(p.relative_to(CONFIGS)) for p in c)
)
def test_shipped_configs_parse(configs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", configs, extra=["--print_config"]))
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: dm_lightning." in printed


def _is_subset(overlay, printed) -> bool:
    if isinstance(overlay, dict):
        return isinstance(printed, dict) and all(
            k in printed and _is_subset(v, printed[k]) for k, v in overlay.items()
        )
    return overlay == printed


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_stage_recipes_take_the_shared_trainer_component(stage, tmp_path, monkeypatch, capsys):
    """configs/stage{1,2}.yaml name configs/trainer/recipe.yaml in a `config:` key (relative
    to the stage file, whatever the working directory) and set only max_steps and the logger
    name on top of it."""
    monkeypatch.chdir(tmp_path)
    configs = [CONFIGS / f"{stage}.yaml", CONFIGS / "data" / "hypersim_vkitti.yaml"]
    with pytest.raises(SystemExit):
        main(cli_args("fit", configs, extra=["--print_config"]))
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
    shared = yaml.safe_load((CONFIGS / "trainer" / "recipe.yaml").read_text())["trainer"]
    callbacks = shared.pop("callbacks")
    assert _is_subset(shared, printed)
    assert len(printed["callbacks"]) == len(callbacks)
    assert all(_is_subset(c, p) for c, p in zip(callbacks, printed["callbacks"]))
    assert printed["max_steps"] == {"stage1": 20000, "stage2": 10000}[stage]
    assert printed["logger"]["init_args"]["name"] == stage


OVERLAYS = sorted((CONFIGS / "encoders").glob("*.yaml")) + sorted(
    (CONFIGS / "ablations").glob("*.yaml")
)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_overlay_configs_apply_on_the_recipe(overlay, capsys):
    """Each ablation/encoder file is a flag on top of the reference recipe and takes effect."""
    stage2 = overlay.name.startswith(("stage2_", "one_stage"))
    recipe = CONFIGS / ("stage2.yaml" if stage2 else "stage1.yaml")
    configs = [recipe, CONFIGS / "data" / "hypersim_vkitti.yaml", overlay]
    with pytest.raises(SystemExit):
        main(cli_args("fit", configs, extra=["--print_config"]))
    printed = yaml.safe_load(capsys.readouterr().out)
    wanted = yaml.safe_load(overlay.read_text())
    assert _is_subset(wanted, printed), f"{overlay.name} did not apply: {printed['model']}"
    assert printed["model"]["class_path"] == (
        "dm_lightning.Stage2" if stage2 else "dm_lightning.Stage1"
    )


def test_console_script_and_module_help(capsys):
    """The installed script's help (``python -m dm_lightning`` runs in test_recovery); usage
    and error hints name ``dm-lightning`` whatever the entry point (argv[0] of ``python -m``
    is ``__main__.py``)."""
    exe = Path(sys.executable).parent / "dm-lightning"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "fit" in result.stdout and "predict" in result.stdout
    with mock.patch.object(sys, "argv", ["__main__.py"]), pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert capsys.readouterr().out.startswith("usage: dm-lightning [options] fit ")


def test_readme_custom_encoder_trains_through_the_cli(
    tmp_path, tiny_model, data_config, monkeypatch
):
    """The README's worked example of a user encoder, run as written."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Your own alignment encoder", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    overlay = section.split("```yaml", 1)[1].split("```", 1)[0]
    (tmp_path / "my_encoders.py").write_text(code)
    (tmp_path / "my_encoder.yaml").write_text(overlay)
    monkeypatch.syspath_prepend(str(tmp_path))
    configs = [CONFIGS / "tiny" / "stage1.yaml", data_config, tmp_path / "my_encoder.yaml"]
    cli = main(
        cli_args(
            "fit", configs, tiny_model, tmp_path, trainer__max_steps=2, trainer__limit_val_batches=1
        )
    )
    model = cli.model
    assert type(model.encoder).__name__ == "ConvPatchEncoder"
    assert model.alignment.projector[0].weight.shape == (48, 64)  # D=48 from the encoder
    assert float(cli.trainer.callback_metrics["train/fa"]) > 0
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_two_process_ddp_fit_matches_single_process_validation(
    tmp_path, tiny_model, data_config, monkeypatch
):
    """Stage 1 on 2 CPU processes (gloo, ddp_spawn): training runs on both ranks, validation
    reads every sample once across ranks (rank 1 has no val shard: uneven), and the synchronised
    metrics equal a single-process validation of the exported weights."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ddp = {"trainer__devices": 2, "trainer__strategy": "ddp_spawn", "trainer__max_steps": 3}
    configs = [CONFIGS / "tiny" / "stage1.yaml", data_config]
    cli = main(cli_args("fit", configs, tiny_model, tmp_path, **ddp))
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert cli.trainer.world_size == 2
    assert metrics["val/synthetic_indoor/num_images"] == 8
    assert metrics["val/synthetic_outdoor/num_images"] == 8
    # ddp_spawn ran the fit in child processes: find its record on disk.
    (record,) = (tmp_path / "stage1").glob("version_*/export.json")
    export = Path(json.loads(record.read_text())["export"])
    single = main(
        cli_args("validate", [CONFIGS / "tiny" / "eval.yaml", data_config], export, tmp_path)
    )
    for name in ("synthetic_indoor", "synthetic_outdoor"):
        for metric in ("abs_rel", "delta1", "rmse"):
            key = f"val/{name}/{metric}"
            assert float(single.trainer.callback_metrics[key]) == pytest.approx(
                metrics[key], rel=1e-5
            )


def test_packed_batches_are_finished_by_the_datamodule_and_need_it(tiny_model, shards, tmp_path):
    """The DataModule finishes its packed batches on the device (on_after_batch_transfer):
    passed whole, the training step and the callbacks see metres and masks, and Lightning
    warns about no hook; its loader passed without it stops before the first step with a
    one-line ConfigError saying what to pass, instead of training on PNG units."""
    import warnings

    import lightning as L

    from dm_lightning import Stage2
    from dm_lightning.data.datamodule import DepthDataModule
    from dm_lightning.data.train_source import TrainSource
    from dm_lightning.errors import ConfigError

    seen: list[dict] = []

    class Batches(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append({k: tuple(v.shape) if torch.is_tensor(v) else v for k, v in batch.items()})

    def trainer() -> L.Trainer:
        return L.Trainer(
            accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
            callbacks=[Batches()],
        )  # fmt: skip

    source = TrainSource("indoor", str(shards / "indoor" / "train-*.tar"), batch_size=2)
    data = DepthDataModule(train=[source], batches_per_epoch=2, num_workers=0, shuffle_buffer=2)
    whole = trainer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        whole.fit(Stage2(str(tiny_model), fourier=False), datamodule=data)
    assert whole.global_step == 2
    assert torch.isfinite(whole.callback_metrics["train/loss"])
    assert not [w for w in caught if "batch_transfer" in str(w.message)]
    assert len(seen) == 2
    for batch in seen:  # a TrainingBatch: (B, 3, H, W) RGB, metres and mask, no PNG units
        assert set(batch) == {"rgb", "depth", "valid", "min_depth", "max_depth", "source", "key",
                              "skipped", "source_index"}  # fmt: skip
        assert batch["rgb"][:2] == (2, 3) and batch["depth"] == batch["valid"]

    seen.clear()
    alone = trainer()
    message = (
        "training_step got a packed training batch (depth_units, not yet metres): the "
        "DataModule finishes its batches on the device, so pass it whole, "
        "trainer.fit(model, datamodule=dm), not dm.train_dataloader()"
    )
    with pytest.raises(ConfigError) as raised:
        alone.fit(Stage2(str(tiny_model), fourier=False), train_dataloaders=data.train_dataloader())
    assert str(raised.value) == message
    assert alone.global_step == 0
