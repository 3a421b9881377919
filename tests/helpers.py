"""What several test modules share: a free TCP port for the multi-process (gloo) tests, the
argument builder of a ``dm-lightning`` run and the numpy reference of the evaluation protocol.

The last two live in the package (``dm_lightning.cli.cli_args``, ``dm_lightning.testing.reference``)
because ``dm_lightning.recipes.demo`` and ``tools/benchmark.py`` use them too; they are named here
so
that a test has one place to import its helpers from.
"""

from __future__ import annotations

import math
import os
import socket

import torch

from dm_lightning.cli import cli_args
from dm_lightning.testing import reference

__all__ = ["cli_args", "free_port", "reference"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Recipe and sweep options of the tests: no progress bars, and each test on one batch per split
# (4 images) to keep the files fast.
QUIET_RECIPE = [
    "--trainer.enable_progress_bar",
    "false",
    "--test.trainer.enable_progress_bar",
    "false",
    "--test.trainer.limit_test_batches",
    "1",
]


def write_raw_tar(path: os.PathLike, raws: list[dict]) -> os.PathLike:
    """A shard of raw samples (member -> bytes, ``__key__`` the sample key), written as the
    shard writer names its members (``<key>.<member>``); returns ``path``."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for raw in raws:
            for member, data in raw.items():
                if member.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{raw['__key__']}.{member}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def batched_rounding_atol(net: torch.nn.Module) -> float:
    """Largest difference on a [0, 1] depth map between a batched forward and batch size 1
    allowed by float32 rounding: a batched kernel may sum a layer's K products (K = its
    fan-in) in another order, a relative change of about sqrt(K) * 2^-24 on activations of
    order 1; over the network's L layers these add in quadrature: sqrt(L * K_max) * 2^-24."""
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    fan_in = max(m.weight[0].numel() for m in layers)
    return math.sqrt(len(layers) * fan_in) * 2.0**-24
