"""``predict`` over a user's image folder: recursive listing, keys that mirror the layout,
unreadable files skipped (named once, counted), and the writer's output folder checked first."""

from __future__ import annotations

import logging
import pickle

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.data.predict import ImageFolder, collate_predict
from dm_lightning.errors import ConfigError, MissingPathError
from dm_lightning.testing.tiny_model import make_tiny_depthmaster
from dm_lightning.training.callbacks import DepthPredictionWriter


def write_image(path, height, width, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, fmt)


@pytest.fixture
def images(tmp_path):
    """Good images at two depths, a truncated JPEG, garbage with a .png suffix, a hidden file
    and a non-image."""
    root = tmp_path / "images"
    write_image(root / "b.png", 16, 24)
    write_image(root / "a.jpg", 24, 16)
    write_image(root / "sub" / "deeper" / "c.png", 16, 16)
    write_image(root / "sub" / "truncated.jpg", 32, 32)
    data = (root / "sub" / "truncated.jpg").read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "garbage.png").write_bytes(b"these bytes are no image")
    (root / ".hidden").mkdir()
    write_image(root / ".hidden" / "x.png", 8, 8)
    (root / "notes.txt").write_text("not an image")
    return root


def test_image_folder_is_recursive_sorted_and_keyed_by_relative_path(images):
    folder = ImageFolder(str(images))
    assert folder.keys == ["a", "b", "garbage", "sub/deeper/c", "sub/truncated"]
    assert [f.name for f in folder.files] == [
        "a.jpg",
        "b.png",
        "garbage.png",
        "c.png",
        "truncated.jpg",
    ]
    good = folder[3]
    assert good["key"] == "sub/deeper/c" and good["error"] is None
    assert good["rgb"].shape == (3, 16, 16) and good["rgb"].dtype == torch.uint8
    for index in (2, 4):  # garbage, truncated: no exception, a reason instead
        sample = folder[index]
        assert sample["rgb"] is None and sample["path"] == str(folder.files[index])
        assert sample["error"]
    assert "cannot identify image file" in folder[2]["error"]
    assert "truncated" in folder[4]["error"].lower()
    # A glob: keys relative to its leading folders without wildcards.
    assert ImageFolder(str(images / "sub" / "**" / "*.png")).keys == ["deeper/c"]
    assert ImageFolder(str(images / "*.png")).keys == ["b", "garbage"]
    assert ImageFolder(str(images / "b.png")).keys == ["b"]


def test_image_folder_refuses_missing_empty_and_clashing_inputs(tmp_path):
    with pytest.raises(MissingPathError, match=f"not found: {tmp_path / 'nope'}"):
        ImageFolder(str(tmp_path / "nope"))
    with pytest.raises(MissingPathError, match="no files match"):
        ImageFolder(str(tmp_path / "nope" / "*.png"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(MissingPathError, match="no images .* found at"):
        ImageFolder(str(tmp_path / "empty"))
    write_image(tmp_path / "clash" / "a.png", 8, 8)
    write_image(tmp_path / "clash" / "a.jpg", 8, 8)
    with pytest.raises(ConfigError, match=r"shared by files .*a\.jpg.*a\.png"):
        ImageFolder(str(tmp_path / "clash"))


def test_predict_collate_passes_unreadable_files_through(images):
    folder = ImageFolder(str(images))
    batch = collate_predict([folder[1]])
    assert batch["rgb"].shape == (1, 3, 16, 24) and batch["key"] == ["b"]
    assert batch["skipped_files"] == []
    skipped = collate_predict([folder[2]])
    assert skipped["rgb"] is None and skipped["key"] == []
    assert skipped["skipped_files"] == [(str(folder.files[2]), folder[2]["error"])]
    mixed = collate_predict([folder[2], folder[3]])
    assert mixed["key"] == ["sub/deeper/c"] and len(mixed["skipped_files"]) == 1
    # Spawned workers pickle the dataset and the collate function (a lambda would fail).
    loader = DepthDataModule(predict=str(images), num_workers=0).predict_dataloader()
    assert loader.collate_fn is collate_predict
    pickle.loads(pickle.dumps((loader.dataset, loader.collate_fn)))


class ContractPredictor(L.LightningModule):
    """``predict_step`` as the batch contract in ImageFolder's docstring asks."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_tiny_depthmaster(0).eval()
        self.batches = 0

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.batches += 1
        if batch["rgb"] is None:
            return {"key": [], "depth": None, "skipped_files": batch["skipped_files"]}
        return {"key": batch["key"], "depth": self.net.predict(batch["rgb"]).cpu()}


def test_predict_writes_readable_images_mirroring_folders_and_counts_skips(
    images, tmp_path, caplog, capsys
):
    out = tmp_path / "out"
    writer = DepthPredictionWriter(output_dir=str(out))
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[writer],
    )
    module = ContractPredictor()
    with caplog.at_level(logging.WARNING, logger="dm_lightning"):
        trainer.predict(module, datamodule=DepthDataModule(predict=str(images), num_workers=0))
    assert module.batches == 5
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        f"{key}{suffix}"
        for key in ("a", "b", "sub/deeper/c")
        for suffix in (".npy", ".png", "_color.png")
    ]
    a = np.asarray(Image.open(out / "a.png"))
    assert a.shape == (24, 16) and a.dtype == np.uint16
    assert (a.min(), a.max()) == (0, 65535)  # stretched per image
    assert np.load(out / "sub" / "deeper" / "c.npy").shape == (16, 16)
    assert np.asarray(Image.open(out / "b_color.png")).shape == (16, 24, 3)
    assert not list(out.glob(".dm_lightning_probe_*"))
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 2
    assert any(str(images / "garbage.png") in w and "cannot identify" in w for w in warnings)
    assert any(str(images / "sub" / "truncated.jpg") in w for w in warnings)
    assert (writer.written, writer.skipped) == (3, 2)
    assert f"wrote 3 depth maps to {out}, skipped 2 unreadable files" in capsys.readouterr().out


def test_writer_handles_an_all_skipped_batch_without_depth(tmp_path):
    writer = DepthPredictionWriter(output_dir=str(tmp_path / "out"))
    writer.folder = tmp_path / "out"
    batch = {"rgb": None, "key": [], "skipped_files": [("x.png", "broken")]}
    prediction = {"key": [], "depth": None, "skipped_files": batch["skipped_files"]}
    writer.write_on_batch_end(None, None, prediction, None, batch, 0, 0)
    writer.write_on_batch_end(None, None, prediction, None, {}, 1, 0)  # from the prediction
    assert (writer.written, writer.skipped) == (0, 2)
    with pytest.raises(ConfigError, match="outside"):
        writer.write_on_batch_end(
            None, None, {"key": ["../x"], "depth": torch.zeros(1, 1, 2, 2)}, None, {}, 2, 0
        )


def test_writer_checks_its_output_folder_before_any_batch(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    for bad in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        writer = DepthPredictionWriter(output_dir=str(bad))
        with pytest.raises(ConfigError, match=f"prediction output folder {bad} cannot be created"):
            writer.setup(L.Trainer(logger=False), ContractPredictor(), "predict")
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    writer = DepthPredictionWriter(output_dir=str(tmp_path / "ro"))
    with pytest.raises(ConfigError, match=f"{tmp_path / 'ro'} is not writable: Permission denied"):
        writer.setup(L.Trainer(logger=False), ContractPredictor(), "predict")
