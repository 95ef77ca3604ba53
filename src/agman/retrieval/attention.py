"""Attention pictures of a query (Fig. 7): the model's map for one attribute drawn over the image as
the model saw it, or over the original beside it (the map taken through the inverse of the crop)."""
from __future__ import annotations

from PIL import Image

from agman.retrieval.embedder import Embedder


def attention_image(embedder: Embedder, image: Image.Image, a: int, alpha: float = 0.5) -> Image.Image | None:
    """The heatmap of attribute ``a`` over the model's view of ``image``, or None without attention."""
    from agman.render import attention_overlay

    att = embedder.attention(image, a)
    return None if att is None else attention_overlay(embedder.model_view(image), att, alpha)


def attention_beside_original(embedder: Embedder, image: Image.Image, a: int, name: str, alpha: float = 0.5, *,
                              boxes=(), tile_size: int | None = None) -> Image.Image | None:
    """``image`` beside the attention of attribute ``a`` (called ``name``) drawn on it where the model
    saw it (``boxes`` in original pixels drawn in yellow), or None without attention.  ``tile_size``
    defaults to the original's long side (256 to 1024 pixels)."""
    from agman.render import attention_beside_original as draw

    att = embedder.attention(image, a)
    if att is None:
        return None
    size = tile_size or min(1024, max(256, max(image.size) + 8))
    return draw(image, att, embedder.input_size, embedder.crop_ratio, boxes=boxes, alpha=alpha,
                caption=f"attention for {name}", tile_size=size)
