"""A checkpoint as one ONNX graph: images ``[B, 3, S, S]`` -> every attribute's embedding ``[B, A, D]``
(and optionally the attention maps ``[B, A, h, w]``), the checkpoint's identity in the metadata."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from agman.errors import InvalidValueError

log = logging.getLogger(__name__)

OPSET = 17
INPUT, EMBEDDINGS, ATTENTION = "images", "embeddings", "attention"
#: metadata_props keys every agman export carries.
META_IDENTITY, META_MODEL, META_ATTRIBUTES = "agman.identity", "agman.model_name", "agman.attributes"
META_INPUT_SIZE, META_CROP, META_PRECISION = "agman.input_size", "agman.crop_ratio", "agman.precision"


class AllAttributes(nn.Module):
    """``images -> embeddings [B, A, D]`` (``embed_all``), plus ``attention [B, A, h, w]`` when asked."""

    def __init__(self, model: nn.Module, attention: bool):
        super().__init__()
        self.model, self.attention = model, attention

    def forward(self, images: Tensor):
        if not self.attention:
            return self.model.embed_all(images)
        state, _ = self.model.encode(images, with_logits=False)
        ids = torch.arange(self.model.n_attributes, device=images.device).expand(images.shape[0], -1)
        out = self.model.head(state, ids)
        return out.embedding, out.attention


def metadata(info, precision: str = "fp32") -> dict[str, str]:
    """What an export records of its checkpoint: identity, model, attributes, input size and crop."""
    return {
        META_IDENTITY: info.identity,
        META_MODEL: info.model_name,
        META_ATTRIBUTES: json.dumps([{"name": a.name, "values": list(a.values)} for a in info.attributes]),
        META_INPUT_SIZE: str(info.input_size),
        META_CROP: repr(float(info.crop_ratio)),
        META_PRECISION: precision,
    }


def set_metadata(path: str | Path, values: dict[str, str]) -> None:
    """Write ``values`` into the ONNX file's metadata_props (replacing keys of the same name)."""
    import onnx

    from agman.fileio import atomic_write

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def export_onnx(checkpoint: str | Path, out: str | Path, *, attention: bool = False, opset: int = OPSET) -> Path:
    """Export ``checkpoint`` to ``out`` (fp32, dynamic batch, the checkpoint's input size)."""
    from agman.engine.checkpoint import load_model
    from agman.fileio import atomic_write

    model, info = load_model(checkpoint, device="cpu")
    size = info.input_size
    with torch.no_grad():
        probe = AllAttributes(model, attention=False)(torch.zeros(1, 3, size, size))
        if attention:
            state, _ = model.encode(torch.zeros(1, 3, size, size), with_logits=False)
            if model.head(state, torch.zeros(1, 1, dtype=torch.long)).attention is None:
                raise InvalidValueError(f"model {info.model_name!r} has no spatial attention to export (--attention)")
    log.info("exporting %s (%s, %d attributes, D=%d, %d px)", checkpoint, info.model_name, probe.shape[1],
             probe.shape[2], size)
    outputs = [EMBEDDINGS, ATTENTION] if attention else [EMBEDDINGS]
    axes = {name: {0: "batch"} for name in [INPUT, *outputs]}
    out = Path(out)
    tmp = out.with_name(out.name + ".export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape arithmetic
        torch.onnx.export(AllAttributes(model, attention), (torch.zeros(2, 3, size, size),), str(tmp),
                          input_names=[INPUT], output_names=outputs, dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    try:
        set_metadata(tmp, metadata(info))
        atomic_write(out, lambda f: f.write(tmp.read_bytes()))
    finally:
        tmp.unlink(missing_ok=True)
    return out
