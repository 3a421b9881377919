"""Run an exported ONNX graph with onnxruntime behind DepthMaster's ``predict`` interface.

``dm-lightning predict --model.init_args.model_path depth.onnx`` and
``predict_images("depth.onnx", ...)`` run through :class:`OnnxDepthModel`: a model path ending
in ``.onnx`` selects the onnxruntime backend (no other option to set). The graph is written by
:func:`~dm_lightning.inference.onnx_export.export_onnx`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dm_lightning.errors import ConfigError
from dm_lightning.models.model_facts import ModelFacts
from dm_lightning.models.onnx_metadata import INPUT_NAME, read_graph_metadata
from dm_lightning.models.pipeline_depthmaster import resize_bilinear
from dm_lightning.models.resolution import working_size

ONNX_SUFFIX = ".onnx"


def is_onnx_path(path: object) -> bool:
    """Whether a model path names an ONNX graph file (``*.onnx``), run with onnxruntime."""
    return isinstance(path, (str, os.PathLike)) and str(path).endswith(ONNX_SUFFIX)


class OnnxDepthModel:
    """An ONNX DepthMaster graph in an onnxruntime session, with :class:`DepthMaster`'s
    ``predict(image, processing_res)``, ``working_size`` and ``latent_factor``.

    The host does what :meth:`DepthMaster.predict` does around the network (same working
    size, same antialiased bilinear resizes, clip after the last resize), so the results
    equal PyTorch's up to float rounding.

    Args:
        path: ``.onnx`` file from :func:`~dm_lightning.inference.onnx_export.export_onnx`.
        providers: onnxruntime execution providers in order of preference; default: those
            this onnxruntime build has (``CPUExecutionProvider`` for the CPU package).
        intra_op_threads: threads per operator (0 = onnxruntime's default, one per core).

    Raises:
        MissingPathError: no file at ``path``.
        ConfigError: not an ONNX file written by dm_lightning, or onnxruntime not installed.
    """

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ConfigError(
                f"model {path} is an ONNX graph, which needs onnxruntime: "
                "pip install 'dm_lightning[onnx]'"
            ) from err
        self.path = Path(path).expanduser()
        meta = read_graph_metadata(self.path)
        self.latent_factor = int(meta["latent_factor"])  # type: ignore[call-overload]
        #: What the graph's metadata records (see export_onnx), as a loaded DepthMaster's
        #: ``facts``: the training target and predict's default long edge.
        self.facts = ModelFacts.from_record(meta)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(
            str(self.path), options, providers=providers or ort.get_available_providers()
        )
        self.training = False

    # DepthMaster-like no-ops, so the task and predict_images treat both backends alike.
    def eval(self) -> OnnxDepthModel:
        return self

    def train(self, mode: bool = True) -> OnnxDepthModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxDepthModel:
        """No-op: the session's execution providers decide where the graph runs."""
        return self

    def working_size(
        self, height: int, width: int, processing_res: int | str | None
    ) -> tuple[int, int]:
        """The size the graph runs an image at, as :meth:`DepthMaster.working_size`."""
        return working_size(height, width, processing_res, self.latent_factor)

    def run(self, image: Tensor) -> Tensor:
        """The bare graph: (B, 3, H, W) float RGB in [0, 1], H and W multiples of the VAE
        factor -> (B, 1, H, W) float32 in [0, 1], on the CPU."""
        x = image.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {INPUT_NAME: x})[0])

    @torch.no_grad()
    def predict(self, image: Tensor, processing_res: int | str | None = None) -> Tensor:
        """Relative depth of an image batch at its own size (see :meth:`DepthMaster.predict`).

        Args:
            image: (B, 3, H, W), uint8 in [0, 255] or float in [0, 1].
            processing_res: long-edge size to run the graph at, an integer >= the VAE factor
                (None or ``"native"`` = native size); rounded to multiples of the factor.

        Returns:
            (B, 1, H, W) float32 in [0, 1] on the CPU; 1 = near for the default target.
        """
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        x = x.cpu()
        h, w = x.shape[-2:]
        size = self.working_size(h, w, processing_res)
        if size != (h, w):
            x = resize_bilinear(x, size)
        depth = self.run(x)
        if size != (h, w):
            # The graph clipped before this resize, as DepthMaster.predict does.
            depth = resize_bilinear(depth, (h, w))
        # Again after the resize: antialiased bilinear overshoots [0, 1] by float rounding.
        return depth.clamp(0.0, 1.0)
