"""An exported model run by ONNX Runtime on the CPU, with the methods indexing and serving call
(``embed_all``, ``attention_map``); refused when its recorded identity is not the checkpoint's."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from agman.engine.onnx_export import (
    ATTENTION,
    INPUT,
    META_ATTRIBUTES,
    META_IDENTITY,
    META_INPUT_SIZE,
    META_PRECISION,
)
from agman.errors import AgmanError, NotFoundError, UsageError


class OnnxExportError(UsageError, ValueError):
    """An ONNX file that is not an agman export, or an export of another checkpoint (exit 2)."""


class OnnxModel:
    """An agman ONNX export in an ``onnxruntime.InferenceSession`` (CPU).

    ``identity``: the checkpoint identity the caller expects; an export made from another checkpoint
    is refused (the identity travels in the file's metadata).
    """

    def __init__(self, path: str | Path, identity: str | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"ONNX export not found: {self.path} (make one with agman export --format onnx)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or int(os.environ.get("AGMAN_ORT_THREADS", "0"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for damaged files
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise OnnxExportError(f"{self.path} cannot be opened by ONNX Runtime: {first}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_IDENTITY not in meta:
            raise OnnxExportError(f"{self.path} is not an agman export: its metadata has no {META_IDENTITY}")
        self.identity = meta[META_IDENTITY]
        if identity is not None and identity != self.identity:
            raise OnnxExportError(
                f"{self.path} was exported from checkpoint {self.identity}, not from the one in use ({identity}); "
                "export this checkpoint again (agman export --format onnx)")
        self.attributes = [a["name"] for a in json.loads(meta.get(META_ATTRIBUTES, "[]"))]
        self.input_size = int(meta.get(META_INPUT_SIZE, "0"))
        self.precision = meta.get(META_PRECISION, "fp32")
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_attention = ATTENTION in outputs
        self.n_attributes = len(self.attributes)
        self.embedding_dim = int(self.session.get_outputs()[0].shape[-1])

    # the parts of the AttributeModel interface that embedding, evaluation and serving use
    training = False

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        if mode:
            raise UsageError("an ONNX export runs inference only")
        return self

    def to(self, device) -> OnnxModel:
        if torch.device(device).type != "cpu":
            raise UsageError(f"--runtime onnx runs on the CPU; device {device} was asked for")
        return self

    def _run(self, images: Tensor, names: list[str]) -> list[np.ndarray]:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return self.session.run(names, {INPUT: array})

    def embed_all(self, images: Tensor, attribute_chunk: int | None = None) -> Tensor:
        """``images [B, 3, S, S] -> [B, A, D]`` float32, computed by ONNX Runtime."""
        return torch.from_numpy(self._run(images, [self.session.get_outputs()[0].name])[0])

    def attention_map(self, images: Tensor, attribute_ids: Tensor) -> Tensor | None:
        """The attention map ``[B, h, w]`` of each (image, attribute) from the export's attention output."""
        if not self.has_attention:
            raise AgmanError(f"{self.path} was exported without attention maps: export again with --attention")
        maps = torch.from_numpy(self._run(images, [ATTENTION])[0])  # [B, A, h, w]
        return maps[torch.arange(len(attribute_ids)), attribute_ids.cpu()]
