"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) served from the package, so they work offline.

FastAPI's own documentation pages load their JavaScript and CSS from a CDN: on a controller
with no route to the internet ``/docs`` is blank ("SwaggerUIBundle is not defined"). These
routes render the same pages with every asset taken from ``docs_static/`` in this package
(Swagger UI and ReDoc, vendored with their licences; see its README), mounted at
:data:`STATIC`. No Google Fonts, no external favicon, no online spec validator: the pages
make no request off the host (but ReDoc's own logo in its footer, which hides itself when it
cannot be fetched).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC", "add_docs"]

#: where the vendored assets are served
STATIC = "/docs-static"


def add_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Serve ``/docs`` and ``/redoc`` for ``app`` from vendored assets.

    Build ``app`` with ``docs_url=None, redoc_url=None`` so FastAPI's CDN-loading pages are
    not added as well.

    Args:
        app: the application.
        openapi_url: where ``app`` serves its OpenAPI schema.
    """
    title = f"{app.title} {app.version}"

    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon-32x32.png",
            # not swagger.io's online validator (a badge fetched from there, for every spec)
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC}/favicon-32x32.png",
            with_google_fonts=False,
        )

    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
    assets = files("corral.controller").joinpath("docs_static")
    app.mount(STATIC, StaticFiles(directory=str(assets)), name="docs-static")
