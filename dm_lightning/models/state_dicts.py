"""Reading weight files safely, and naming the keys that do not fit a model.

Every ``torch.load`` in the model code goes through :func:`load_state_dict_file`, with
``weights_only=True``: a pickle that holds anything but tensors and plain containers could run
code when unpickled, so such a file is refused with a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from dm_lightning.errors import ConfigError, MissingPathError

SHOWN_KEYS = 10


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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"{what} {path} is not a plain state dict (only tensors in dicts/lists are loaded): "
            f"torch.load(weights_only=True) refused it ({_unpickling_reason(err)}); unpickling "
            "other objects can run arbitrary code. Re-save the state dict alone or as .safetensors"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:  # truncated zip, empty file, ...
        raise ConfigError(f"{what} {path} is not a readable torch file: {err}") from err
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
