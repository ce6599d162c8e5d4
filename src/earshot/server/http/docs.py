"""``/docs`` (Swagger UI) and ``/redoc`` served with their assets from this server.

FastAPI's own pages load their JavaScript, CSS and favicon from a CDN, which leaves a blank
page on a machine without internet. The assets come from the ``fastapi-offline`` package
(MIT; Swagger UI is Apache-2.0, ReDoc MIT, each bundle carrying its licence banner), and are
mounted under ``/docs-assets``, as FastAPI documents in "Self-hosting JavaScript and CSS for
docs".

Both pages are sent with a Content-Security-Policy that lets them load from this server only:
the ReDoc bundle itself would fetch its "API docs by Redocly" logo from Redocly's CDN, so
the browser is told not to (and the empty image is hidden).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
# Inline scripts and styles are the pages' own (FastAPI's templates); blob: is ReDoc's
# search worker. Everything else from this origin only.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
       "'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
       "connect-src 'self'; frame-ancestors 'self'")
_HIDE_REDOC_LOGO = '<style>img[src^="https://cdn.redoc.ly"]{display:none}</style></head>'


def _local_only(page: HTMLResponse, head_extra: str = "") -> HTMLResponse:
    body = bytes(page.body).decode()
    if head_extra:
        body = body.replace("</head>", head_extra, 1)
    return HTMLResponse(body, headers={"Content-Security-Policy": CSP})


def add_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Add the two documentation pages to an app created with ``docs_url=None`` and
    ``redoc_url=None``."""
    static = files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(static)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or f"{docs_url}/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local_only(get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            oauth2_redirect_url=root + oauth2_redirect,
            swagger_ui_parameters=app.swagger_ui_parameters))

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local_only(get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/favicon.png", with_google_fonts=False),
            _HIDE_REDOC_LOGO)
