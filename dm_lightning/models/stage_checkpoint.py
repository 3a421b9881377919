"""A stage run's Lightning checkpoint as the loaders read it: the DepthMaster network's weights
under the task's ``net.`` prefix and, from an EMA run, their average in the EMA callback's state.

The layout is declared here, below training, so that the loaders (``load_depthmaster`` of a
``.ckpt``, ``predict_images``, ``DepthMasterPipeline.from_pretrained``) read it without importing
training; the training side writes by these names (the tasks hold the network as ``net``,
:class:`~dm_lightning.training.ema.EMAWeights` names its state with :data:`EMA_STATE_PREFIX`
and keeps :data:`EMA_NAMES` / :data:`EMA_AVERAGE` in it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from dm_lightning.errors import MissingPathError
from dm_lightning.models.state_dicts import load_torch_file

#: The prefix of the network's weights in a task's ``state_dict`` (the task's ``net``).
NETWORK_PREFIX = "net."
#: The EMA callback's state key starts with this; the state holds the averaged parameters'
#: task names and their averages, two lists in the same order.
EMA_STATE_PREFIX = "EMAWeights"
EMA_NAMES = "names"
EMA_AVERAGE = "average"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file read safely (``weights_only``), memory-mapped: predicting from a full
    ``last.ckpt`` reads its weights, not its optimizer state.

    Raises:
        MissingPathError: no file at ``path``.
        ConfigError: it holds pickled objects other than tensors and plain containers.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingPathError(f"checkpoint {path} not found")
    return load_torch_file(file, mmap=True)


def network_weights(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The network's state dict in a checkpoint (its ``net.*`` weights without the prefix),
    with the EMA average in place of the live weights where a full checkpoint of an EMA run
    holds one (what the export would hold; a weights-only checkpoint holds it already)."""
    state = {
        k[len(NETWORK_PREFIX) :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(NETWORK_PREFIX)
    }
    for name, value in ema_average(checkpoint).items():
        if name.startswith(NETWORK_PREFIX) and name[len(NETWORK_PREFIX) :] in state:
            state[name[len(NETWORK_PREFIX) :]] = value
    return state


def ema_average(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """Task parameter name -> EMA average, from the EMA callback's state in a full checkpoint
    (empty without one)."""
    for key, value in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith(EMA_STATE_PREFIX) and isinstance(value, dict):
            return dict(zip(value.get(EMA_NAMES, []), value.get(EMA_AVERAGE, [])))
    return {}
