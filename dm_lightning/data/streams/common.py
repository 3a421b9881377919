"""What every shard stream shares: the reader's rank and worker, seeds, and the loader that
tells a stream its rank and epoch."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, worker, ...), stable across runs."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(
        1, np.uint64
    )
    return int(state[0] >> 1)


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed if initialised, else the RANK /
    WORLD_SIZE environment variables, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class RankAware(IterableDataset):
    """Base of the streams: knows its (rank, world), set by :class:`StreamLoader` in the main
    process (worker processes may not see the process group), and its worker."""

    rank_world: tuple[int, int] = (0, 1)
    # Worker processes of the loader (0 counts as 1: the main process reads), set by
    # StreamLoader before the loader's length is asked for or its workers start.
    loader_workers: int = 1

    def reader(self) -> tuple[int, int, int, int]:
        """(rank, world, worker, workers) of the calling process."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return (*self.rank_world, worker, workers)


def assign(items: list[Any], index: int, count: int) -> list[Any]:
    """``items[index::count]``, or all items when there are fewer than ``count``."""
    return items[index::count] if len(items) >= count else list(items)


class StreamLoader(DataLoader):
    """DataLoader for the streams: before workers start on each pass, it records the process's
    rank in the dataset and advances a training stream's ``epoch``, so each epoch draws new
    (but reproducible) shards and orders.

    Its data position is part of Lightning's checkpoint (``state_dict`` /
    ``load_state_dict``, which also tells Lightning the loader resumes): the training
    stream's epoch, seed and the optimizer steps of earlier run parts. A resumed epoch
    continues with batches drawn from a seed that folds in the resume step (see
    :class:`MixedSourceBatches`), so it neither replays the batches its first part already
    trained on nor runs longer than planned (Lightning ends it at its batch count).
    """

    def state_dict(self) -> dict[str, Any]:
        if not hasattr(self.dataset, "epoch"):
            return {}
        return {"epoch": self.dataset.epoch, "seed": self.dataset.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "epoch" not in state or not hasattr(self.dataset, "epoch"):
            return
        if state["seed"] != self.dataset.seed:
            warnings.warn(
                f"resuming with data.seed={self.dataset.seed}, the checkpoint was trained with "
                f"seed {state['seed']}: the stream continues with the new seed",
                stacklevel=2,
            )
        self.dataset.epoch = int(state["epoch"])
        self._started = False  # the restored epoch is the next one iterated

    def _tell_reader(self) -> None:
        if isinstance(self.dataset, RankAware):
            self.dataset.rank_world = process_rank()
            self.dataset.loader_workers = max(1, self.num_workers)

    def __len__(self) -> int:
        # Batches this rank yields (the stream's own count; TypeError when it has none).
        # Lightning asks for it before iterating, for progress totals and batch limits.
        self._tell_reader()
        return super().__len__()

    def __iter__(self):
        self._tell_reader()
        if hasattr(self.dataset, "epoch"):
            if getattr(self, "_started", False):
                self.dataset.epoch += 1
            self._started = True
        return super().__iter__()
