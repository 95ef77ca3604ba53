"""ASGI middleware guarding the service beyond localhost: the bearer token, the number of requests
in progress, and the headers every answer carries.  (The allowed ``Host`` names are Starlette's
``TrustedHostMiddleware``; connection timeouts live in :mod:`agman.service.server`.)"""
from __future__ import annotations

import hmac
from urllib.parse import parse_qs, quote, unquote

from fastapi.responses import JSONResponse, RedirectResponse

TOKEN_COOKIE = "agman_token"
MIN_TOKEN_LENGTH = 16


class TokenAuth:
    """Every request must carry the token: ``Authorization: Bearer <token>``, or the cookie a
    browser gets by opening ``/?token=<token>`` once (HttpOnly, SameSite=Strict, the token
    percent-encoded; the page then works unchanged).  401 otherwise."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    def _valid(self, given: str | bytes | None) -> bool:
        if given is None:
            return False
        given = given.encode() if isinstance(given, str) else given
        return hmac.compare_digest(given, self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        scheme, _, credentials = auth.partition(b" ")
        if scheme.lower() == b"bearer" and self._valid(credentials.strip()):
            await self.app(scope, receive, send)
            return
        if self._valid(_cookie(headers.get(b"cookie", b""), TOKEN_COOKIE)):
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["path"] == "/" and scope["method"] == "GET" and self._valid(query.get("token", [None])[0]):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, quote(self.token.decode(), safe=""), httponly=True,
                                samesite="strict", secure=scope.get("scheme") == "https")
            await response(scope, receive, send)
            return
        await JSONResponse(
            {"detail": "this service needs its token: send 'Authorization: Bearer <token>' "
                       "(a browser: open /?token=<token> once)"},
            401,
            {"WWW-Authenticate": "Bearer"},
        )(scope, receive, send)


def _cookie(header: bytes, name: str) -> str | None:
    """The value of cookie ``name``, percent-decoded (the token is percent-encoded in it: a space,
    ``;``, ``,`` or ``"`` would otherwise be quoted by one side and not understood by the other)."""
    for part in header.decode("latin-1").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return unquote(value)
    return None


class ConcurrencyLimit:
    """At most ``max_requests`` requests in progress; more are answered 503 at once (with
    ``Retry-After``) rather than queued without bound."""

    def __init__(self, app, max_requests: int):
        self.app = app
        self.max_requests = max_requests
        self.active = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_requests:
            await JSONResponse(
                {"detail": f"the server is busy ({self.max_requests} requests in progress); retry shortly"},
                503,
                {"Retry-After": "1"},
            )(scope, receive, send)
            return
        self.active += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class SecurityHeaders:
    """``X-Content-Type-Options: nosniff`` (a browser never guesses a type from the bytes) and
    ``Referrer-Policy: no-referrer`` on every answer."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in self.HEADERS if h[0] not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)
