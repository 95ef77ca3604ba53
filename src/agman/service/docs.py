"""The API documentation pages, served without a CDN: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc)
load their scripts and styles from this server, from the copies the ``fastapi-offline`` package
installs (MIT; Swagger UI is Apache-2.0, ReDoc MIT), so they work on a machine without internet."""
from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs-assets"
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'")
"""The pages' Content-Security-Policy: everything from this server (their inline start-up script
and styles included); a browser does not even ask another host (ReDoc's footer links a logo from
its CDN: the image is hidden when it fails to load)."""


PAGES = {  # path: (FastAPI's page, its name, {argument: asset file}, other arguments)
    "/docs": (get_swagger_ui_html, "Swagger UI",
              {"swagger_js_url": "swagger-ui-bundle.js", "swagger_css_url": "swagger-ui.css",
               "swagger_favicon_url": "favicon.png"},
              {"swagger_ui_parameters": {"validatorUrl": None}}),  # no badge fetched from the online validator
    "/redoc": (get_redoc_html, "ReDoc",
               {"redoc_js_url": "redoc.standalone.js", "redoc_favicon_url": "favicon.png"},
               {"with_google_fonts": False}),
}


def add_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` on ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    for path, (render, name, assets, options) in PAGES.items():
        app.add_api_route(path, _page(app, render, name, assets, options), include_in_schema=False,
                          response_class=HTMLResponse)


def _page(app: FastAPI, render, name: str, assets: dict, options: dict):
    def page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        urls = {argument: f"{root}{ASSETS_URL}/{file}" for argument, file in assets.items()}
        response = render(openapi_url=root + app.openapi_url, title=f"{app.title} - {name}", **urls, **options)
        response.headers["Content-Security-Policy"] = DOCS_POLICY
        return response

    return page
