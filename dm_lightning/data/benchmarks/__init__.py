"""Readers of the zero-shot evaluation benchmarks (docs/method.md §6) and of user RGB-D folders.

Every reader is a map-style :class:`torch.utils.data.Dataset` whose items are
:class:`~dm_lightning.data.batch.DepthSample` s (``source`` = the benchmark name; so
:func:`~dm_lightning.data.collate.collate` stacks them), and every reader has ``name``,
``processing_res`` (long edge the network runs at, None = the native size) and ``len()``.

Data come from the benchmarks' standard evaluation archives (the Marigold/DepthMaster ones)
given as an extracted folder **or** as the ``.tar`` of that folder (``tar -C root -cf x.tar .``
or ``tar -C parent -cf x.tar root``: a single top-level folder is looked through). A reference
list (``splits/eval/<name>.txt``, one sample per line, whitespace-separated paths relative to the
root) names the files; see each reader for its line format.

Sizes: the ground truth is authoritative, because metrics are computed at GT size. Benchmark
crops (KITTI's KB crop) apply to RGB and GT alike; if the RGB still differs in size from the GT,
it is resized to the GT size (bilinear, antialiased) so that one sample has one H x W. The
standard archives have equal sizes, so this only happens with other copies (e.g. raw ScanNet
colour at 1296x968).

Evaluation sets: a :class:`BenchmarkSpec` names a reader (a benchmark of :data:`BENCHMARKS` or
an ``rgbd_folder``) and :func:`build_dataset` builds it; the
:class:`~dm_lightning.data.datamodule.DepthDataModule` accepts specs next to shard patterns in
``val`` and ``test`` (so validation during ``fit`` can run on e.g. NYU or KITTI subsets), and
:class:`~dm_lightning.data.datamodule.BenchmarkDataModule` is the test-only shorthand. The
long edge a set runs at (``int | None``, None = native size) is
``DepthDataModule.processing_res``, asked once per loader by the model. Every sample is
evaluated exactly once over DDP ranks
(:class:`~dm_lightning.data.benchmarks.sampler.RankShardSampler`).

Modules: :mod:`.decoders` (depth file decoders), :mod:`.base` (the common reader and the
reference lists), one per benchmark (:mod:`.nyu`, :mod:`.kitti`, :mod:`.eth3d`,
:mod:`.scannet`, :mod:`.diode`), :mod:`.rgbd_folder` (users' RGB-D folders) and
:mod:`.sampler`; this package holds the registry and re-exports their public names. Crops are
in :mod:`dm_lightning.data.crops`, the folder-or-tar reader in :mod:`dm_lightning.data.store`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from dm_lightning.data.benchmarks.base import (
    EVAL_LIST_DIR,
    BenchmarkDataset,
    DepthPairDataset,
    ListEntry,
    read_list,
    resolve_list_file,
    sample_key,
)
from dm_lightning.data.benchmarks.decoders import (
    DEPTH_DECODERS,
    ETH3D_GT_SHAPE,
    NYU_RAW_INVALID,
    DepthDecoder,
    ScaledDepthDecoder,
    decode_eth3d,
    decode_npy,
    decode_nyu_raw,
    decode_redwood,
    decode_rgb,
    decode_single_channel,
    decode_sun_rgbd,
    decode_tum,
)
from dm_lightning.data.benchmarks.diode import DIODE
from dm_lightning.data.benchmarks.eth3d import ETH3D
from dm_lightning.data.benchmarks.kitti import KITTIEigen
from dm_lightning.data.benchmarks.nyu import NYUv2
from dm_lightning.data.benchmarks.rgbd_folder import RGBDFolder
from dm_lightning.data.benchmarks.sampler import RankShardSampler
from dm_lightning.data.benchmarks.scannet import ScanNet
from dm_lightning.data.crops import (
    NYU_EIGEN_CROP,
    kitti_benchmark_crop,
    kitti_eigen_mask,
    resize_rgb,
)
from dm_lightning.data.store import FileStore

__all__ = [
    "BENCHMARKS",
    "DEPTH_DECODERS",
    "DIODE",
    "ETH3D",
    "ETH3D_GT_SHAPE",
    "EVAL_LIST_DIR",
    "NYU_EIGEN_CROP",
    "NYU_RAW_INVALID",
    "RGBD_FOLDER",
    "BenchmarkDataset",
    "BenchmarkSpec",
    "DepthDecoder",
    "DepthPairDataset",
    "FileStore",
    "KITTIEigen",
    "ListEntry",
    "NYUv2",
    "RGBDFolder",
    "RankShardSampler",
    "ScaledDepthDecoder",
    "ScanNet",
    "build_dataset",
    "decode_eth3d",
    "decode_npy",
    "decode_nyu_raw",
    "decode_redwood",
    "decode_rgb",
    "decode_single_channel",
    "decode_sun_rgbd",
    "decode_tum",
    "get_benchmark",
    "kitti_benchmark_crop",
    "kitti_eigen_mask",
    "read_list",
    "resize_rgb",
    "resolve_list_file",
    "sample_key",
]

BENCHMARKS: dict[str, type[BenchmarkDataset]] = {
    cls.name: cls for cls in (NYUv2, KITTIEigen, ETH3D, ScanNet, DIODE)
}
"""Benchmark readers by name: nyu, kitti, eth3d, scannet, diode."""


def get_benchmark(name: str, root: str | os.PathLike, **kwargs: Any) -> BenchmarkDataset:
    """The reader of benchmark ``name`` on ``root`` (a folder or tar); ``kwargs`` go to it
    (e.g. ``list_file=``).

    Raises:
        ValueError: unknown name (lists the known ones).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name](root, **kwargs)


RGBD_FOLDER = "rgbd_folder"


@dataclass
class BenchmarkSpec:
    """One evaluation set.

    Args:
        kind: a benchmark of :data:`~dm_lightning.data.benchmarks.BENCHMARKS` (``nyu``,
            ``kitti``, ``eth3d``, ``scannet``, ``diode``) or ``rgbd_folder`` (a user folder read
            by :class:`~dm_lightning.data.benchmarks.RGBDFolder`).
        root: the data folder, or a tar archive of it.
        list_file: reference list replacing the packaged ``splits/eval/<kind>.txt`` (benchmarks
            only).
        processing_res: long edge (pixels) the network runs at; None = the benchmark's own
            (756 for ETH3D, 640 for DIODE, native size otherwise).
        options: further reader keyword arguments, e.g. ``rgb_pattern``, ``depth_pattern``,
            ``decode``/``depth_scale``, ``min_depth``, ``max_depth`` for ``rgbd_folder``.
    """

    kind: str
    root: str
    list_file: str | None = None
    processing_res: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


def build_dataset(name: str, spec: BenchmarkSpec) -> DepthPairDataset:
    """The reader of one spec; an ``rgbd_folder`` takes ``name`` as its ``source`` unless
    ``options`` sets one.

    Raises:
        ValueError: unknown ``kind``, or a ``list_file`` given to an ``rgbd_folder`` (names the
            benchmark key and the value).
        FileNotFoundError: the root (or list) does not exist, from the reader.
    """
    if spec.kind == RGBD_FOLDER:
        if spec.list_file is not None:
            raise ValueError(
                f"benchmarks.{name}: list_file={spec.list_file!r} is not used by kind "
                f"{RGBD_FOLDER!r}, which matches files by options.rgb_pattern/depth_pattern"
            )
        return RGBDFolder(spec.root, **{"name": name, **spec.options})
    if spec.kind not in BENCHMARKS:
        raise ValueError(
            f"benchmarks.{name}.kind: unknown kind {spec.kind!r}; expected one of "
            f"{', '.join([*sorted(BENCHMARKS), RGBD_FOLDER])}"
        )
    return get_benchmark(spec.kind, spec.root, list_file=spec.list_file, **spec.options)
