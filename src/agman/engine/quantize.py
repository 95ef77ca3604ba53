"""INT8 exports: ONNX Runtime static quantization of an fp32 export, calibrated on a sample of catalog images."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from agman.engine.onnx_export import INPUT, META_PRECISION, set_metadata
from agman.errors import InvalidValueError

log = logging.getLogger(__name__)


def calibration_batches(paths: list[str], *, input_size: int, crop_ratio: float, count: int = 64,
                        batch_size: int = 8, seed: int = 0) -> Iterator[np.ndarray]:
    """``count`` images drawn at random (seeded) from ``paths``, prepared as the model sees them, in batches."""
    from agman.data.cache import image_dataset

    if not paths:
        raise InvalidValueError("no calibration images: the catalog sample is empty")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), size=min(count, len(paths)), replace=False).tolist())
    data = image_dataset([paths[i] for i in chosen], None, input_size=input_size, crop_ratio=crop_ratio, train=False)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for images, _ in loader:
        yield images.numpy().astype(np.float32)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over prepared batches."""

    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {INPUT: batch}

    def rewind(self):  # pragma: no cover - one pass is all MinMax calibration needs
        pass


def quantize_onnx(fp32: str | Path, out: str | Path, batches, *, per_channel: bool = True) -> Path:
    """Static INT8 quantization (QDQ, signed 8-bit weights per channel, unsigned activations, MinMax
    ranges from ``batches``) of an fp32 agman export; its metadata is kept, precision set to int8."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, out = Path(fp32), Path(out)
    meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    prepared = out.with_name(out.name + ".pre.onnx")
    staged = out.with_name(out.name + ".int8.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(staged), _Reader(batches), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        calibrate_method=CalibrationMethod.MinMax)
        set_metadata(staged, {**meta, META_PRECISION: "int8"})
        staged.replace(out)
    finally:
        prepared.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)
    return out
