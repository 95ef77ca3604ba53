"""Uploads: the request-body limit (counted as the body streams in, with a deadline), decoding an
image within the pixel and aspect limits (the data layer's bounded decoder), and reducing it to
what the service keeps of a query."""
from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from PIL import Image

from agman.data.decode import ImageLimits, ImageLoadError, ImageTooLargeError, decode_image


class BodyLimit:
    """ASGI middleware bounding every request body to ``max_bytes``.

    A declared ``Content-Length`` over the limit is answered 413 before the body is read; a body
    without one (chunked) is counted as it streams in and answered 413 as soon as it passes the
    limit, so nothing over the limit is read or spooled to disk.  The whole body must arrive within
    ``timeout`` seconds of the first read (408 otherwise)."""

    def __init__(self, app, max_bytes: int, upload_bytes: int, timeout: float = 60.0):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes
        self.timeout = timeout

    def too_large(self, size: str) -> HTTPException:
        return HTTPException(413, f"request body of {size} bytes exceeds the {self.upload_bytes}-byte upload limit")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await JSONResponse({"detail": "invalid Content-Length header"}, 400)(scope, receive, send)
                return
            if declared > self.max_bytes:
                await JSONResponse({"detail": self.too_large(str(declared)).detail}, 413)(scope, receive, send)
                return
        loop = asyncio.get_running_loop()
        received, done, deadline = 0, False, None
        started = False

        async def counted_receive():
            nonlocal received, done, deadline
            if done:  # the body is complete: later reads wait for the disconnect, without a deadline
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.timeout
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise self.too_large(f"more than {self.max_bytes}")
            else:
                done = True
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except HTTPException as exc:  # raised by counted_receive outside a route (no handler answered it)
            if started or exc.status_code not in (408, 413):
                raise
            await JSONResponse({"detail": exc.detail}, exc.status_code, {"Connection": "close"})(scope, receive, send)


def decode_upload(data: bytes, limits: ImageLimits) -> Image.Image:
    """Bytes of an uploaded file -> RGB image (:func:`agman.data.decode.decode_image`: the size and
    aspect ratio checked from the header before decoding, large images decoded at reduced size);
    413 when too large or too elongated, 400 when not a (complete) image of an accepted format."""
    try:
        return decode_image(data, limits, name="upload")
    except ImageTooLargeError as exc:
        raise HTTPException(413, str(exc)) from None
    except ImageLoadError as exc:
        raise HTTPException(400, str(exc)) from None


@dataclass
class QueryPicture:
    """What the service keeps of an uploaded image: the model's input (the upload resized as the
    model's transform resizes it, so embedding or drawing attention over it gives the bits the full
    image would) and a PNG thumbnail for the page."""

    view: Image.Image
    thumbnail_png: bytes

    @property
    def nbytes(self) -> int:
        return self.view.width * self.view.height * len(self.view.getbands()) + len(self.thumbnail_png)


def model_input_side(input_size: int, crop_ratio: float) -> int:
    """The short side the model's transform resizes an image to (``agman.data.transforms``)."""
    return int(round(input_size / crop_ratio))


def reduce_upload(picture: Image.Image, input_size: int, crop_ratio: float, thumbnail: int) -> QueryPicture:
    """The decoded upload reduced to :class:`QueryPicture` (``picture`` itself becomes the
    thumbnail).  Its aspect ratio was bounded when it was decoded, so the view is at most
    ``side^2 x max_aspect`` pixels."""
    from torchvision import transforms as T

    view = T.Resize(model_input_side(input_size, crop_ratio), antialias=True)(picture)
    picture.thumbnail((thumbnail, thumbnail))  # in place: the full picture is not needed any more
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return QueryPicture(view, buf.getvalue())
