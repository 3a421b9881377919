"""One LightningDataModule for both training stages: streamed shards, mixed per batch.

Training: each source is an infinite, resampled shard stream with its own resolution and batch
size; whole batches are mixed with :class:`webdataset.RandomMix`, so every micro-batch comes from
a single source (SPEC section 5). An epoch is a fixed number of batches (``with_epoch``), which
keeps ranks in step whatever the shard sizes.

Validation/test: each named split is a finite stream, split over ranks and workers.

Batches are dicts: ``rgb`` (B, 3, H, W) uint8, ``depth`` (B, 1, H, W) float32 metres,
``valid`` (B, 1, H, W) bool, ``min_depth``/``max_depth`` (B,) float64 metres, ``source`` and
``key`` (lists of str).
"""

from __future__ import annotations

import glob
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dm_lightning.data.schema import decode_sample

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class TrainSource:
    """One training source.

    Args:
        name: label used in logs (e.g. "hypersim").
        shards: shard list: a brace pattern (``data/hypersim/train-{000000..000099}.tar``), a glob
            (``data/hypersim/train-*.tar``) or a single file.
        probability: share of batches drawn from this source (normalised over sources).
        batch_size: micro-batch size for this source.
    """

    name: str
    shards: str
    probability: float = 1.0
    batch_size: int = 2


def expand_shards(pattern: str) -> list[str]:
    """Shard files of a glob, brace pattern or single path, sorted.

    Raises:
        FileNotFoundError: naming the pattern, when it matches no existing file.
    """
    urls: list[str] = []
    for part in wds.shardlists.expand_urls(pattern):
        urls.extend(sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part])
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if not urls or missing:
        raise FileNotFoundError(
            f"no shards for {pattern!r}" + (f" (missing: {missing[:3]})" if missing else "")
        )
    return urls


def sample_to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    """Decoded schema sample -> tensors with the valid mask of the source's range."""
    meta = sample["meta"]
    depth = torch.from_numpy(sample["depth"]).unsqueeze(0)
    max_depth = math.inf if meta.get("max_depth") is None else float(meta["max_depth"])
    min_depth = float(meta["min_depth"])
    valid = torch.isfinite(depth) & (depth > min_depth) & (depth < max_depth)
    return {
        "rgb": torch.from_numpy(sample["rgb"]).permute(2, 0, 1).contiguous(),
        "depth": depth,
        "valid": valid,
        "min_depth": min_depth,
        "max_depth": max_depth,
        "source": meta["source"],
        "key": sample["key"],
    }


def random_hflip(sample: dict[str, Any], p: float = 0.5) -> dict[str, Any]:
    """Flip RGB, depth and mask together with probability ``p`` (the only augmentation)."""
    if random.random() < p:
        for k in ("rgb", "depth", "valid"):
            sample[k] = sample[k].flip(-1)
    return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-size samples; raise naming the keys if resolutions differ."""
    shapes = {tuple(s["rgb"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(
            f"samples of one batch differ in size {sorted(shapes)} "
            f"(keys {[s['key'] for s in samples]}): give each resolution its own source"
        )
    out: dict[str, Any] = {
        k: torch.stack([s[k] for s in samples]) for k in ("rgb", "depth", "valid")
    }
    for k in ("min_depth", "max_depth"):
        out[k] = torch.tensor([s[k] for s in samples], dtype=torch.float64)
    for k in ("source", "key"):
        out[k] = [s[k] for s in samples]
    return out


def _batched(samples, batch_size: int, partial: bool):
    batch = []
    for s in samples:
        batch.append(s)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch and partial:
        yield collate(batch)


class ImageFolder(Dataset):
    """Images of a folder (or a glob) for ``predict``: ``rgb`` (1, 3, H, W) uint8 and ``key``."""

    def __init__(self, path: str) -> None:
        p = Path(path)
        files = sorted(p.iterdir()) if p.is_dir() else sorted(map(Path, glob.glob(path)))
        self.files = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found at {path}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        rgb = np.asarray(Image.open(path).convert("RGB"))
        return {"rgb": torch.from_numpy(rgb.copy()).permute(2, 0, 1), "key": path.stem}


class DepthDataModule(L.LightningDataModule):
    """Shard-streaming data for DepthMaster training, validation, test and predict.

    Args:
        train: training sources, mixed per batch by their ``probability``.
        val: validation splits, name -> shard pattern; the first one drives checkpoint selection.
        test: test splits, name -> shard pattern.
        predict: a folder or glob of images for ``predict`` (default: the test splits).
        batches_per_epoch: training batches per epoch and rank.
        eval_batch_size: batch size of validation and test streams.
        num_workers: data-loading processes per rank.
        shuffle_buffer: samples held for shuffling within each training source.
        hflip: probability of the horizontal flip augmentation.
    """

    def __init__(
        self,
        train: list[TrainSource] | None = None,
        val: dict[str, str] | None = None,
        test: dict[str, str] | None = None,
        predict: str | None = None,
        batches_per_epoch: int = 1000,
        eval_batch_size: int = 4,
        num_workers: int = 2,
        shuffle_buffer: int = 200,
        hflip: float = 0.5,
    ) -> None:
        super().__init__()
        self.train_sources = list(train or [])
        self.val_splits = dict(val or {})
        self.test_splits = dict(test or {})
        self.predict_path = predict
        self.batches_per_epoch = batches_per_epoch
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.hflip = hflip

    # Names of the eval dataloaders, in dataloader_idx order; the LightningModule logs by them.
    @property
    def val_names(self) -> list[str]:
        return list(self.val_splits)

    @property
    def test_names(self) -> list[str]:
        return list(self.test_splits)

    def _train_stream(self, source: TrainSource) -> wds.WebDataset:
        urls = expand_shards(source.shards)
        hflip = self.hflip
        return (
            wds.WebDataset(
                urls,
                resampled=True,
                shardshuffle=False,  # resampling already draws shards at random
                nodesplitter=wds.split_by_node,
                handler=wds.warn_and_continue,
                empty_check=False,
            )
            .shuffle(self.shuffle_buffer)
            .map(decode_sample, handler=wds.warn_and_continue)
            .map(sample_to_tensors)
            .map(lambda s: random_hflip(s, hflip))
            .compose(lambda it: _batched(it, source.batch_size, partial=False))
        )

    def train_dataloader(self) -> DataLoader:
        if not self.train_sources:
            raise ValueError("DepthDataModule: no training sources configured (data.train)")
        probs = [s.probability for s in self.train_sources]
        if any(p < 0 for p in probs) or sum(probs) <= 0:
            raise ValueError(
                f"training source probabilities must be >= 0 with a positive sum: {probs}"
            )
        streams = [self._train_stream(s) for s in self.train_sources]
        mixed = wds.RandomMix(streams, probs=[p / sum(probs) for p in probs])
        loader = wds.WebLoader(mixed, batch_size=None, num_workers=self.num_workers)
        return loader.with_epoch(self.batches_per_epoch)

    def _eval_loader(self, pattern: str) -> DataLoader:
        urls = expand_shards(pattern)
        stream = (
            wds.WebDataset(
                urls,
                shardshuffle=False,
                nodesplitter=wds.split_by_node,
                workersplitter=wds.split_by_worker,
                handler=wds.warn_and_continue,
                empty_check=False,
            )
            .map(decode_sample, handler=wds.warn_and_continue)
            .map(sample_to_tensors)
            .compose(lambda it: _batched(it, self.eval_batch_size, partial=True))
        )
        workers = min(self.num_workers, len(urls))
        return wds.WebLoader(stream, batch_size=None, num_workers=workers)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(p) for p in self.val_splits.values()]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(p) for p in self.test_splits.values()]

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.predict_path is None:
            return self.test_dataloader()
        # Images differ in size: one per batch.
        return DataLoader(
            ImageFolder(self.predict_path),
            batch_size=1,
            num_workers=min(self.num_workers, 2),
            collate_fn=lambda items: {
                "rgb": items[0]["rgb"].unsqueeze(0),
                "key": [items[0]["key"]],
            },
        )
