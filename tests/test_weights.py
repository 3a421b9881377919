"""Weights a user brings, in their real layouts, saved tiny and loaded offline through the
same code a user runs: SD-2 folder with text encoder + tokenizer, Meta DINOv2 keys,
Depth-Anything-V2 ``pretrained.`` keys."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dm_lightning.models.depthmaster import EMPTY_PROMPT_FILE, load_depthmaster
from dm_lightning.models.encoders import TimmEncoder
from dm_lightning.models.tiny import make_tiny_depthmaster

transformers = pytest.importorskip("transformers")


def write_sd2_layout(folder):
    """vae/ + unet/ + text_encoder/ + tokenizer/, no cached embedding: like the SD-2 release."""
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
