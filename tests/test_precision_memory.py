"""Mixed precision and the memory switches (issue "Scale out"): bf16-mixed trains both stages
with the FE block and the losses in fp32, the frozen modules may be held in bf16 without
changing the export, and gradient checkpointing / channels-last leave the gradients as they
were."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS
from helpers import cli_args
from safetensors.torch import load_file

from dm_lightning import E2EFT, Stage2
from dm_lightning.cli import run_cli
from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.data.packing import finish_training_batch
from dm_lightning.data.train_source import TrainSource
from dm_lightning.losses import gradient_loss, masked_mse


def test_losses_are_fp32_under_bf16_autocast():
    pred = torch.rand(2, 1, 16, 16, dtype=torch.bfloat16)
    target = torch.rand(2, 1, 16, 16)
    valid = torch.rand(2, 1, 16, 16) > 0.3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mse, grad = masked_mse(pred, target, valid), gradient_loss(pred, target, valid)
    assert mse.dtype == grad.dtype == torch.float32
    # the same numbers as fp32 math on the bf16 values
    ref = ((pred.float() - target).square() * valid).sum() / valid.sum()
    assert float(mse) == pytest.approx(float(ref), rel=1e-6)


def _fit(configs, tiny_model, tmp_path, **overrides):
    args = cli_args(
        "fit", configs, tiny_model, tmp_path, trainer__max_steps=2, trainer__limit_val_batches=1,
        trainer__precision="bf16-mixed", data__init_args__batches_per_epoch=2, **overrides,
    )  # fmt: skip
    return run_cli(args)


def test_stage1_bf16_mixed_with_frozen_modules_in_bf16(tiny_model, data_config, tmp_path):
    cli = _fit(
        [CONFIGS / "tiny" / "stage1.yaml", data_config], tiny_model, tmp_path,
        model__init_args__cast_frozen="true",
    )  # fmt: skip
    model = cli.model
    assert model.net.vae.encoder.conv_in.weight.dtype == torch.bfloat16
    assert next(model.encoder.parameters()).dtype == torch.bfloat16
    assert model.net.vae.decoder.conv_in.weight.dtype == torch.float32  # decodes in fp32
    assert model.net.unet.conv_in.weight.dtype == torch.float32  # trained weights: fp32 master
    parts = model._loss_parts
    assert {"latent_mse", "fa", "loss"} <= set(parts)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in parts.values())
    assert 0 < float(cli.trainer.callback_metrics["val/abs_rel"]) < 10
    # the export holds the VAE as loaded, not rounded to bf16
    (export,) = (tmp_path / "stage1").glob("version_*/export")
    saved = load_file(str(export / "vae" / "diffusion_pytorch_model.safetensors"))
    original = load_file(str(tiny_model / "vae" / "diffusion_pytorch_model.safetensors"))
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in original)


def test_stage2_bf16_mixed_with_every_memory_switch(tiny_model, data_config, tmp_path):
    cli = _fit(
        [CONFIGS / "tiny" / "stage2.yaml", data_config], tiny_model, tmp_path,
        model__init_args__gradient_checkpointing="true",
        model__init_args__decoder_checkpointing="true",
        model__init_args__channels_last="true", model__init_args__cast_frozen="true",
    )  # fmt: skip
    model = cli.model
    fe = model.net.unet.fftblock
    assert all(p.dtype == torch.float32 for p in fe.parameters())
    assert model.net.unet.is_gradient_checkpointing and model.net.vae.decoder.gradient_checkpointing
    assert model.net.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    parts = model._loss_parts
    assert {"pixel_mse", "gradient", "loss"} <= set(parts)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in parts.values())
    assert cli.trainer.global_step == 2


def test_cast_frozen_at_full_precision_warns(tiny_model):
    model = Stage2(str(tiny_model), cast_frozen=True)
    with pytest.warns(UserWarning, match="cast_frozen is set but trainer.precision is '32-true'"):
        model.cast_frozen_modules("32-true")
    assert model.net.vae.encoder.conv_in.weight.dtype == torch.float32


@pytest.fixture(scope="module")
def batch(shards):
    source = TrainSource("indoor", str(shards / "indoor" / "train-*.tar"), batch_size=2)
    data = DepthDataModule(train=[source], batches_per_epoch=1, num_workers=0, shuffle_buffer=2)
    return next(iter(data.train_dataloader()))


def _unet_grads(tiny_model, batch, task=Stage2, **switches) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the FE block's initialisation
    model = task(str(tiny_model), **switches)
    model.train()
    checkpointed = switches.get("decoder_checkpointing", False)
    assert model.net.vae.decoder.gradient_checkpointing is checkpointed
    loss, _ = model.training_loss(finish_training_batch(batch))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.net.unet.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("task", [Stage2, E2EFT])
def test_checkpointing_and_channels_last_keep_the_gradients(tiny_model, batch, task):
    """Both tasks that backpropagate through the decoder take decoder_checkpointing."""
    plain = _unet_grads(tiny_model, batch, task)
    assert len(plain) > 10
    # recomputation repeats the same kernels: the same gradients to the bit; channels-last
    # picks other convolution kernels: the same up to float32 rounding
    for switches, tolerance in (
        ({"gradient_checkpointing": True, "decoder_checkpointing": True}, 0.0),
        ({"channels_last": True}, 1e-3),
    ):
        other = _unet_grads(tiny_model, batch, task, **switches)
        assert other.keys() == plain.keys()
        for name, grad in plain.items():
            worst = float((other[name] - grad).abs().max())
            assert worst <= tolerance * float(grad.abs().max()), (switches, name, worst)


def test_compile_unet_compiles_in_place_and_keeps_names(tiny_model, batch, monkeypatch):
    # Inductor takes about two minutes for the tiny U-Net on this CPU: the wiring is checked
    # with dynamo's "eager" backend (the same graph capture, no code generation).
    calls = []
    original = torch.nn.Module.compile

    def eager_compile(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return original(module, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    plain = Stage2(str(tiny_model), fourier=False)
    compiled = Stage2(str(tiny_model), fourier=False, compile_unet=True)
    assert calls == ["DepthMasterUNet"]  # the U-Net, loaded as the pipeline's class
    assert compiled.net.unet._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints unchanged
    x = finish_training_batch(batch)
    with torch.no_grad():
        z = plain.net.encode(plain.rgb_signed(x))
        torch.testing.assert_close(compiled.net.denoise(z), plain.net.denoise(z))
