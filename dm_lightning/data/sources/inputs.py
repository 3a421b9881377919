"""Input files of the training-set converters: where they are, their bytes, their decoding.

Inputs are folders and/or uncompressed tars, searched in order (:func:`resolve_inputs`, on
:mod:`dm_lightning.data.store`); a tar member is found by the end of its name, so any prefix
works, and is read by offset (:func:`read_input`: worker processes need no tar handle), which
is why tars must be uncompressed. The decoders turn bytes into arrays and raise
:class:`InputError` naming the file, which the shard engine logs and skips.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from dm_lightning.data.photos import ImageDecodeError, read_uint16_png
from dm_lightning.data.sources.engine import ItemError
from dm_lightning.data.store import FileStore, locate


class InputError(ItemError):
    """An input file is missing, unreadable or not what its layout promises (message names it)."""


class Location(NamedTuple):
    """Where an input file is: a plain file (``offset`` -1) or a member of a tar at
    ``path`` whose data are ``size`` bytes from byte ``offset``."""

    path: str
    offset: int = -1
    size: int = -1
    member: str = ""

    @property
    def where(self) -> str:
        """``path`` or ``path:member``, for messages."""
        return f"{self.path}:{self.member}" if self.offset >= 0 else self.path


class Blob(NamedTuple):
    """Bytes of an input file and its :attr:`Location.where`."""

    data: bytes
    where: str


def resolve_inputs(inputs: Sequence[str], names: Iterable[str]) -> dict[str, Location]:
    """Locate input files given by paths relative to the dataset root.

    Each name is looked for in the inputs in order; the first that has it wins. A folder has
    ``name`` if ``folder/name`` is a file; a tar has it if a member's name equals it or ends
    with ``"/" + name`` (:meth:`~dm_lightning.data.store.FileStore.find` with ``anywhere``).
    Names found nowhere are absent from the result.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: an input file is not an uncompressed tar.
    """
    stores = {_open_input(root): root for root in inputs}
    found: dict[str, Location] = {}
    try:
        for name, (store, rel) in locate(list(stores), names, anywhere=True).items():
            root = stores[store]
            if store.is_tar:
                offset, size = store.member_span(rel)
                found[name] = Location(root, offset, size, rel)
            else:
                found[name] = Location(os.path.join(root, rel))
    finally:
        for store in stores:
            store.close()
    return found


def _open_input(root: str) -> FileStore:
    """A store of a folder or an uncompressed tar (members are later read by offset, which
    needs raw bytes)."""
    if os.path.isfile(root):
        try:
            with tarfile.open(root, "r:"):
                pass
        except (tarfile.TarError, OSError) as err:
            raise ValueError(
                f"input {root!r} is not an uncompressed tar ({err}); extract it or repack it "
                "without compression"
            ) from err
    elif not os.path.isdir(root):
        raise FileNotFoundError(f"input {root!r} does not exist (expected a folder or a .tar)")
    return FileStore(root)


def read_input(location: Location) -> Blob:
    """Bytes of an input file.

    Raises:
        InputError: naming the file, when it cannot be read in full.
    """
    try:
        with open(location.path, "rb") as f:
            if location.offset < 0:
                data = f.read()
            else:
                f.seek(location.offset)
                data = f.read(location.size)
    except OSError as err:
        raise InputError(f"{location.where}: cannot read ({err})") from err
    if location.offset >= 0 and len(data) != location.size:
        raise InputError(f"{location.where}: truncated ({len(data)} of {location.size} bytes)")
    return Blob(data, location.where)


def decode_rgb(blob: Blob) -> np.ndarray:
    """An image file (PNG, JPEG, ...) -> (H, W, 3) uint8 RGB; :class:`InputError` if it does
    not decode."""
    try:
        with Image.open(io.BytesIO(blob.data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for bad/truncated files
        raise InputError(f"{blob.where}: cannot decode image ({err})") from err


def decode_uint16_png(blob: Blob) -> np.ndarray:
    """A single-channel 16-bit PNG -> (H, W) int64 units; :class:`InputError` if it does not
    decode or is not 16-bit grey."""
    try:
        return read_uint16_png(io.BytesIO(blob.data)).astype(np.int64)
    except ImageDecodeError as err:
        raise InputError(f"{blob.where}: {err}") from err


def decode_hdf5(blob: Blob) -> np.ndarray:
    """The array ``"dataset"`` of an HDF5 file (needs ``h5py``); :class:`InputError` if it
    cannot be read."""
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "reading Hypersim HDF5 files needs h5py: pip install h5py (or dm_lightning[convert])"
        ) from err
    try:
        with h5py.File(io.BytesIO(blob.data), "r") as f:
            return np.asarray(f["dataset"])
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"{blob.where}: cannot read HDF5 dataset 'dataset' ({err})") from err


Loader = Callable[[dict[str, Blob]], tuple[np.ndarray, np.ndarray]]
"""Blobs of one frame by role -> ``rgb`` (H, W, 3) uint8 and ``depth`` (H, W) metres (0 =
invalid), at the source's stored size; raises :class:`InputError` naming the bad file."""


def check_shapes(shapes: dict[str, tuple[int, ...]], blobs: dict[str, Blob]) -> None:
    """Raise :class:`InputError` unless the rasters of one frame (``shapes`` by role) share
    their height and width."""
    if len({shape[:2] for shape in shapes.values()}) != 1:
        described = ", ".join(f"{blobs[role].where} {shape}" for role, shape in shapes.items())
        raise InputError(f"rasters of one frame differ in size: {described}")


def decode_rgb_and_units(blobs: dict[str, Blob]) -> tuple[np.ndarray, np.ndarray]:
    """The frame of a PNG/JPEG layout (roles ``rgb``: an image file, ``depth``: a 16-bit PNG)
    -> ((H, W, 3) uint8 RGB, (H, W) int64 depth units), checked to share their size."""
    rgb = decode_rgb(blobs["rgb"])
    units = decode_uint16_png(blobs["depth"])
    check_shapes({"rgb": rgb.shape, "depth": units.shape}, blobs)
    return rgb, units
