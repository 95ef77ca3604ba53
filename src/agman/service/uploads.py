"""Uploads: the request-body limit (before a body is read) and decoding an image within the pixel limit."""
from __future__ import annotations

import io
import warnings

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError


class BodyLimit:
    """ASGI middleware: a POST whose ``Content-Length`` exceeds ``max_bytes`` is answered 413 before
    its body is read (multipart parsing would otherwise spool it to disk first)."""

    def __init__(self, app, max_bytes: int, upload_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None:
                try:
                    too_big = int(length) > self.max_bytes
                except ValueError:
                    await JSONResponse({"detail": "invalid Content-Length header"}, 400)(scope, receive, send)
                    return
                if too_big:
                    detail = f"request body of {int(length)} bytes exceeds the {self.upload_bytes}-byte upload limit"
                    await JSONResponse({"detail": detail}, 413)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes of an uploaded file -> RGB image; 400 when not a (complete) image, 413 when too large."""
    if not data:
        raise HTTPException(400, "the uploaded image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise HTTPException(
                        413, f"image is {w}x{h} = {w * h} pixels; this service accepts at most {max_pixels}"
                    )
                im.load()
                return im.convert("RGB")
    except HTTPException:
        raise
    except UnidentifiedImageError:
        raise HTTPException(400, "the upload is not an image this service can read (JPEG, PNG, WebP, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise HTTPException(413, f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise HTTPException(400, f"cannot decode the image (truncated or corrupt?): {exc}") from None
