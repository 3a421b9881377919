"""Reading weight files safely, and naming the keys that do not fit a model.

Every ``torch.load`` of dm_lightning goes through :func:`load_torch_file` (weight files,
Lightning checkpoints, checkpoint hyper-parameters), with ``weights_only=True``: a pickle that
holds anything but tensors and plain containers could run code when unpickled, so such a file
is refused with a :class:`ConfigError` naming it; zip archives are memory-mapped when asked, so
only the tensors used are read.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dm_lightning.errors import ConfigError, MissingPathError

SHOWN_KEYS = 10


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
PICKLE_MAGIC = b"\x80"  # the legacy format starts with a pickle protocol opcode


def load_torch_file(
    path: str | Path, what: str = "", mmap: bool = False, kind: str = "checkpoint"
) -> Any:
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain containers only, never
    arbitrary pickled code. ``mmap``: map the file instead of reading it whole, so that only
    the tensors used are read (the weights of a 10 GB ``last.ckpt`` that also holds the Adam
    state); a legacy (pre-zip) file, which cannot be mapped, is read whole.

    Args:
        path: the file (a missing one raises ``FileNotFoundError``, as ``torch.load``).
        what: what the file is for the messages (``"encoder weights"``); "" names the path
            alone.
        kind: what a PyTorch file of this use is called (``checkpoint``, ``weights file``).

    Raises:
        ConfigError: naming the file: it is not a PyTorch file (a text file, random bytes,
            an empty file), it is truncated or damaged, or it holds objects other than
            tensors and plain containers (it is refused, not executed).
    """
    label = f"{what} {path}" if what else str(path)
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        why = "it is empty" if not head else "it is neither a torch.save archive nor a pickle"
        raise ConfigError(f"{label} is not a PyTorch {kind}: {why}")
    try:
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=mmap and head == ZIP_MAGIC
        )
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" not in text and "GLOBAL" not in text:
            raise ConfigError(
                f"{label} is not a readable PyTorch {kind}: {_first_line(err)}"
            ) from err
        if kind == "checkpoint":
            raise ConfigError(
                f"{label}: refused to load, it holds objects other than tensors and plain "
                f"containers (loading it would run pickled code): {_unpickling_reason(err)}"
            ) from err
        raise ConfigError(
            f"{label} is not a plain state dict: it holds objects other than tensors and plain "
            f"containers, refused because loading it would run pickled code "
            f"({_unpickling_reason(err)}); re-save the tensors alone or as .safetensors"
        ) from err
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError) as err:
        # A torch.save archive cut short (an interrupted copy, a full disk) fails in the
        # zip reader; a damaged legacy pickle in the unpickler.
        raise ConfigError(
            f"{label} is truncated or damaged, not a complete PyTorch {kind} "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err


def _first_line(err: BaseException) -> str:
    """The first sentence of an error's text, for a one-line message."""
    text = (str(err).strip().splitlines() or [""])[0]
    return text.split(". ")[0][:200]


def load_state_dict_file(path: str | Path, what: str = "weights") -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a torch pickle (``.pth``, ``.bin``, ``.pt``).

    Args:
        path: the file.
        what: what the file is, for messages (e.g. "encoder weights").

    Raises:
        MissingPathError: the file does not exist.
        ConfigError: the file is not a plain state dict: a pickle ``weights_only=True`` refuses
            (arbitrary objects, or not a pickle at all), or something other than a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{what} file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ConfigError(f"{what} {path} is not a readable safetensors file: {err}") from err
    state = load_torch_file(path, what, kind="weights file")
    if not isinstance(state, dict):
        raise ConfigError(
            f"{what} {path} holds a {type(state).__name__}, expected a state dict "
            "(parameter name -> tensor)"
        )
    return state


def _unpickling_reason(err: Exception) -> str:
    """The one informative sentence of torch's long weights-only refusal."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
        text = text.split("Please use", 1)[0].split("Check the documentation", 1)[0]
    text = " ".join(text.split()).rstrip(". ")
    return text[:200] or type(err).__name__


def describe_keys(missing: Iterable[str], unexpected: Iterable[str]) -> str:
    """``missing N keys [...]; unexpected M keys [...]``, the first :data:`SHOWN_KEYS` of each
    (sorted)."""
    parts = []
    for label, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected))):
        if keys:
            more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
            parts.append(f"{label} {len(keys)} keys {keys[:SHOWN_KEYS]}{more}")
    return "; ".join(parts)


def shape_mismatches(state: Mapping[str, Any], own: Mapping[str, Tensor]) -> str:
    """``N shapes differ ['key: file (..) vs model (..)', ...]`` for the keys of ``state`` that
    ``own`` (a model's state dict) also has with another shape, the first :data:`SHOWN_KEYS`
    (sorted); "" when every shared key fits. Values without a shape are left out."""
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sorted(state.items())
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if not shapes:
        return ""
    more = f" and {len(shapes) - SHOWN_KEYS} more" if len(shapes) > SHOWN_KEYS else ""
    return f"{len(shapes)} shapes differ {shapes[:SHOWN_KEYS]}{more}"
