"""Weights a user brings, in their real layouts, saved tiny and loaded offline through the
same code a user runs: SD-2 folder with text encoder + tokenizer, Meta DINOv2 keys,
Depth-Anything-V2 ``pretrained.`` keys."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dm_lightning.errors import ConfigError, MissingPathError
from dm_lightning.models.depthmaster import EMPTY_PROMPT_FILE
from dm_lightning.models.encoders import TimmEncoder
from dm_lightning.models.loading import load_depthmaster
from dm_lightning.testing.tiny_model import make_tiny_depthmaster


def write_sd2_layout(folder):
    """vae/ + unet/ + text_encoder/ + tokenizer/, no cached embedding: like the SD-2 release."""
    transformers = pytest.importorskip("transformers")
    model = make_tiny_depthmaster(5)
    model.save_pretrained(folder)
    (folder / EMPTY_PROMPT_FILE).unlink()
    (folder / "dm_lightning.json").unlink()
    tok_dir = folder / "tokenizer"
    tok_dir.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    tokenizer.save_pretrained(tok_dir)
    config = transformers.CLIPTextConfig(
        vocab_size=4,
        hidden_size=32,  # = the tiny U-Net's cross_attention_dim (1024 for SD-2)
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(config).eval()
    text_encoder.save_pretrained(folder / "text_encoder")
    with torch.no_grad():
        expected = text_encoder(torch.tensor([[0, 1]]))[0]  # "" -> [BOS, EOS], no padding
    return expected


def test_sd2_folder_empty_prompt_embedding_computed_once_and_cached(tmp_path):
    folder = tmp_path / "sd2"
    expected = write_sd2_layout(folder)
    cache = tmp_path / "cache"
    model = load_depthmaster(str(folder), cache_dir=cache)
    assert model.empty_prompt_embedding.shape == (1, 2, 32)
    torch.testing.assert_close(model.empty_prompt_embedding, expected)
    assert len(list(cache.glob("*.safetensors"))) == 1
    # Second load: from the cache, the text encoder is not needed any more.
    shutil.rmtree(folder / "text_encoder")
    again = load_depthmaster(str(folder), cache_dir=cache)
    torch.testing.assert_close(again.empty_prompt_embedding, expected)


def tiny_vit(name: str) -> TimmEncoder:
    return TimmEncoder(name, model_kwargs=dict(depth=1, embed_dim=32, num_heads=2, img_size=56))


def meta_dinov2_state(encoder: TimmEncoder) -> dict[str, torch.Tensor]:
    """The timm weights rewritten in Meta's original DINOv2 key layout."""
    state = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    dim = encoder.embed_dim
    if "reg_token" in state:
        # Meta keeps the class position in pos_embed and adds it to cls_token at run time.
        pos_cls = torch.randn(1, 1, dim)
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - pos_cls
        state["pos_embed"] = torch.cat([pos_cls, state["pos_embed"]], dim=1)
    state["mask_token"] = torch.zeros(1, dim)
    return state


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_meta_dinov2_and_depth_anything_v2_checkpoints(tmp_path, name):
    torch.manual_seed(1)
    source = tiny_vit(name)
    x = torch.rand(1, 3, 64, 80)
    expected, grid = source(x)
    meta = meta_dinov2_state(source)
    torch.save(meta, tmp_path / "dinov2_pretrain.pth")
    dav2 = {f"pretrained.{k}": v for k, v in meta.items()}
    dav2["depth_head.projects.0.weight"] = torch.zeros(4, 32, 1, 1)
    torch.save(dav2, tmp_path / "depth_anything_v2.pth")
    for file in ("dinov2_pretrain.pth", "depth_anything_v2.pth"):
        enc = TimmEncoder(
            name,
            weights=str(tmp_path / file),
            model_kwargs=dict(depth=1, embed_dim=32, num_heads=2, img_size=56),
        )
        tokens, enc_grid = enc(x)
        assert enc_grid == grid
        torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)


# ---- weights that do not fit, missing parts, hub ids, unsafe pickles -----------------------

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    """A private copy of the tiny model folder, to break."""
    return shutil.copytree(tiny_model, tmp_path / "model")


def edit_weights(file, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(str(file))
    edit(state)
    save_file(state, str(file))


def drop_key(state, key):
    del state[key]


@pytest.mark.parametrize("part", ["unet", "vae"])
@pytest.mark.parametrize("change", ["remove", "add", "rename"])
def test_stock_weights_that_do_not_match_the_config_list_the_keys(model_copy, part, change):
    """diffusers' from_pretrained only logs these; they must stop the load, naming the keys."""
    file = model_copy / part / WEIGHTS
    key = "conv_norm_out.weight" if part == "unet" else "decoder.conv_out.weight"
    edits = {
        "remove": lambda s: drop_key(s, key),
        "add": lambda s: s.update({"extra.weight": torch.zeros(1)}),
        "rename": lambda s: s.update({"renamed." + key: s.pop(key)}),
    }
    edit_weights(file, edits[change])
    with pytest.raises(ConfigError, match="do not match its config.json") as info:
        load_depthmaster(str(model_copy))
    message = str(info.value)
    assert str(model_copy / part) in message
    if change in ("remove", "rename"):
        assert f"missing 1 keys ['{key}']" in message
    if change == "add":
        assert "unexpected 1 keys ['extra.weight']" in message
    if change == "rename":
        assert f"unexpected 1 keys ['renamed.{key}']" in message


def test_fe_weights_that_do_not_match_list_missing_and_unexpected_keys(tmp_path):
    from dm_lightning.models.unet_hooks import attach_fourier_enhancement

    model = make_tiny_depthmaster(1)
    attach_fourier_enhancement(model.unet)
    model.save_pretrained(tmp_path / "m")
    file = tmp_path / "m" / "unet" / WEIGHTS

    def edit(state):
        for k in sorted(k for k in state if k.startswith("fftblock."))[:12]:
            del state[k]
        state["fftblock.extra.weight"] = torch.zeros(1)

    edit_weights(file, edit)
    with pytest.raises(ConfigError) as info:
        load_depthmaster(str(tmp_path / "m"))
    message = str(info.value)
    assert str(file) in message and "plus the FE block" in message
    assert "missing 12 keys ['fftblock.conv_f1.bias'" in message and "and 2 more" in message
    assert "unexpected 1 keys ['fftblock.extra.weight']" in message


def test_missing_folders_and_files_are_named(model_copy, tmp_path):
    with pytest.raises(MissingPathError, match=f"model folder {tmp_path / 'nope'} not found"):
        load_depthmaster(str(tmp_path / "nope"))
    (model_copy / "unet" / "config.json").unlink()
    with pytest.raises(MissingPathError, match=f"U-Net folder {model_copy / 'unet'} has no "):
        load_depthmaster(str(model_copy))
    with pytest.raises(MissingPathError, match=f"U-Net folder not found: {tmp_path / 'u'}"):
        load_depthmaster(str(model_copy), unet_path=str(tmp_path / "u"))
    (model_copy / "vae" / WEIGHTS).unlink()
    with pytest.raises(MissingPathError, match="VAE folder .* has no weights file"):
        load_depthmaster(str(model_copy))
    for sub in ("unet", "vae"):
        shutil.rmtree(model_copy / sub)
        with pytest.raises(MissingPathError, match=f"has no {sub}/ subfolder"):
            load_depthmaster(str(model_copy))


def no_hub(*args, **kwargs):
    raise AssertionError(f"the hub was asked for {args} {kwargs}")


def test_local_looking_values_never_reach_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(MissingPathError) as info:
        load_depthmaster("runs/export")
    assert str(info.value) == (
        "model folder runs/export not found; runs/ exists, so this is taken for a local path; "
        "use hf://runs/export for a hub repository"
    )
    for value in ("./owner/name", "../owner", "/owner/name", "~/name", "a/b/c", "name"):
        with pytest.raises(MissingPathError, match="not found"):
            load_depthmaster(value)


def test_hub_ids_and_the_hf_prefix_reach_the_hub(tiny_model, tmp_path, monkeypatch):
    import huggingface_hub

    asked = []

    def fake_download(repo_id, allow_patterns=None):
        asked.append(repo_id)
        return str(tiny_model)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert isinstance(load_depthmaster("hf://runs/export"), torch.nn.Module)
    load_depthmaster("owner/name")  # no local owner/ folder: a hub id
    assert asked == ["runs/export", "owner/name"]
    with pytest.raises(ConfigError, match="expected hf://owner/name"):
        load_depthmaster("hf://just-a-name")

    def offline(repo_id, allow_patterns=None):
        raise OSError("no network\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(MissingPathError, match="cannot fetch model 'owner/name' .*: no network$"):
        load_depthmaster("hf://owner/name")


class RunsCode:
    """Unpickling this runs code (it would create ``marker``): must be refused, never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_unsafe_pickles_are_refused_naming_the_file(tiny_model, tmp_path):
    marker = tmp_path / "ran"
    # U-Net weights as a .bin pickle carrying an object.
    model = shutil.copytree(tiny_model, tmp_path / "m")
    from safetensors.torch import load_file

    state = load_file(str(model / "unet" / WEIGHTS))
    (model / "unet" / WEIGHTS).unlink()
    bin_file = model / "unet" / "diffusion_pytorch_model.bin"
    torch.save({**state, "payload": RunsCode(marker)}, bin_file)
    with pytest.raises(ConfigError, match="not a plain state dict") as info:
        load_depthmaster(str(model))
    assert str(bin_file) in str(info.value) and "exec" in str(info.value)
    # A clean .bin still loads.
    torch.save(state, bin_file)
    load_depthmaster(str(model))
    # Encoder weights.
    enc_file = tmp_path / "encoder.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "args": RunsCode(marker)}, enc_file)
    with pytest.raises(ConfigError, match=f"encoder weights {enc_file} is not a plain state dict"):
        tiny_vit_with_weights(enc_file)
    (tmp_path / "garbage.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(ConfigError, match="garbage.pth"):
        tiny_vit_with_weights(tmp_path / "garbage.pth")
    assert not marker.exists()


def tiny_vit_with_weights(file):
    return TimmEncoder(
        "vit_small_patch14_dinov2",
        weights=str(file),
        model_kwargs=dict(depth=1, embed_dim=32, num_heads=2, img_size=56),
    )


def test_a_checkpoint_holding_objects_is_refused_as_a_checkpoint(tmp_path):
    # Checkpoints get the checkpoint wording; only weight files are told to re-save tensors.
    from pathlib import PurePosixPath

    from dm_lightning.models.state_dicts import load_torch_file

    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"root": PurePosixPath("/data")}}, path)
    with pytest.raises(ConfigError, match="refused to load, it holds objects other than") as info:
        load_torch_file(path)
    assert str(path) in str(info.value) and "re-save" not in str(info.value)
    with pytest.raises(ConfigError, match="is not a plain state dict") as info:
        load_torch_file(path, "encoder weights", kind="weights file")
    assert "re-save the tensors alone or as .safetensors" in str(info.value)
