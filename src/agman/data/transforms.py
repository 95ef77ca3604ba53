"""Image pipeline (§3.1): resize, centre crop, random horizontal flip for training, ImageNet normalisation.

``crop_ratio`` is the share of the resized short side the centre crop keeps: ``1.0`` (default) is the
released code's and ASEN's ``Resize(S)`` + ``CenterCrop(S)`` (the short side is kept whole, the long
side cut to S); ``0.875`` is the ImageNet-evaluation habit ``Resize(S / 0.875)`` + ``CenterCrop(S)``,
which also cuts ~12 % off the short side (hems, trouser ends).
"""
from __future__ import annotations

from torchvision import transforms as T

from agman.errors import InvalidValueError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(input_size: int = 224, train: bool = False, crop_ratio: float = 1.0):
    """Resize the short side to ``input_size / crop_ratio``, centre-crop ``input_size``, (train: random
    horizontal flip), to tensor, ImageNet-normalise.  ``crop_ratio=1`` is the released code's
    ``Resize(input_size)`` + ``CenterCrop(input_size)``."""
    steps = _view_steps(input_size, crop_ratio)
    if train:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def _view_steps(input_size: int, crop_ratio: float) -> list:
    if input_size < 16:
        raise InvalidValueError(f"input_size must be at least 16 pixels, got {input_size}")
    if not 0 < crop_ratio <= 1:
        raise InvalidValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
    return [T.Resize(int(round(input_size / crop_ratio)), antialias=True), T.CenterCrop(input_size)]


def model_view(image, input_size: int, crop_ratio: float):
    """The PIL image as the model sees it (the resize and centre crop of :func:`build_transform`),
    for drawing attention maps over the pixels they came from."""
    return T.Compose(_view_steps(input_size, crop_ratio))(image)


def denormalize(tensor):
    """Undo the ImageNet normalisation of a [3, H, W] or [B, 3, H, W] tensor (for pictures)."""
    mean = tensor.new_tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = tensor.new_tensor(IMAGENET_STD).view(-1, 1, 1)
    return (tensor * std + mean).clamp(0, 1)
