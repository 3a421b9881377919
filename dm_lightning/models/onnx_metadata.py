"""The facts dm_lightning records in an ONNX graph (``metadata_props``, as an export's
``dm_lightning.json``), read without the weights: what the loaders ask of an ``.onnx`` model
path (target, processing resolution) and what the onnxruntime backend needs (VAE factor, the
graph's input name)."""

from __future__ import annotations

import json
from pathlib import Path

from dm_lightning.errors import ConfigError, MissingPathError

#: The graph's ``metadata_props`` key holding dm_lightning's facts (JSON, see
#: :func:`~dm_lightning.inference.onnx_export.graph_metadata`).
META_KEY = "dm_lightning"
#: The graph's input and output names (what the exporter writes, what onnxruntime feeds).
INPUT_NAME = "image"
OUTPUT_NAME = "depth"


def read_graph_metadata(path: str | Path) -> dict[str, object]:
    """dm_lightning's facts (:func:`~dm_lightning.inference.onnx_export.graph_metadata`)
    recorded in an ONNX file written by :func:`~dm_lightning.inference.onnx_export.export_onnx`;
    the weights are not read.

    Raises:
        MissingPathError: no file at ``path``.
        ConfigError: not an ONNX file, or one without dm_lightning's metadata.
    """
    import onnx

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingPathError(f"ONNX model {path} not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ConfigError(f"{path} is not a readable ONNX model: {err}") from err
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        facts = json.loads(props[META_KEY])
        int(facts["latent_factor"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(
            f"ONNX model {path} has no dm_lightning metadata ({META_KEY!r} with the VAE's "
            "latent_factor): export it with tools/export_onnx.py"
        ) from err
    return facts
