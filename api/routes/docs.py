"""The interactive API docs (Swagger UI at ``/docs``), served offline from the installed package.

Swagger UI's JavaScript, CSS and favicon come from the ``fastapi-offline`` distribution (a dependency of
fpmon; only its ``static/`` files are used: Swagger UI 5, which reads the OpenAPI 3.1 document FastAPI
writes — ``swagger-ui-bundle``'s Swagger UI 4 cannot), served under ``/docs-assets/``: no CDN, so the docs
work on an air-gapped cluster. The page itself is
FastAPI's ``get_swagger_ui_html``; its one inline script (the ``SwaggerUIBundle({...})`` call) runs under a
per-response CSP nonce, so the policy of ``/docs`` allows scripts from this origin and that nonce only
(:func:`docs_csp`; the rest of the site keeps its own, stricter policy, ``api.security``).

ReDoc (``/redoc``) is not served: its standalone bundle compiles JSON-schema validators at run time
(``new Function``) and starts web workers from ``blob:`` URLs, which the policy would have to allow
(``'unsafe-eval'``); Swagger UI shows the same OpenAPI document (``/openapi.json``, open to any other viewer).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

#: where Swagger UI's files are served from
ASSETS_PREFIX = "/docs-assets"
#: the files of fastapi-offline's static/ folder the page needs (nothing else of that folder is served)
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
#: an opening ``<script>`` tag without attributes: an inline script of FastAPI's page
_INLINE_SCRIPT = re.compile(r"<script>")

router = APIRouter(include_in_schema=False)


def assets_dir() -> Path:
    """The folder of Swagger UI's files inside the installed ``fastapi-offline`` package."""
    return Path(fastapi_offline.__file__).parent / "static"


def docs_csp(nonce: str) -> str:
    """The Content-Security-Policy of ``/docs``: everything from this origin only; inline script only with
    ``nonce``. Swagger UI sets style attributes and draws icons from ``data:`` URIs (hence those two)."""
    return (
        f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


def swagger_page(title: str, openapi_url: str, root_path: str = "") -> HTMLResponse:
    """Swagger UI's HTML for ``openapi_url``, its assets from ``{root_path}/docs-assets``, its inline script
    under a fresh nonce that the response's own CSP header allows (``api.security.SecurityHeaders`` keeps a
    header the route set). The validator badge (an image from validator.swagger.io) is off: nothing leaves
    this origin."""
    assets = root_path + ASSETS_PREFIX
    page = get_swagger_ui_html(
        openapi_url=root_path + openapi_url,
        title=f"{title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode("utf-8")
    nonce = secrets.token_urlsafe(18)
    html, count = _INLINE_SCRIPT.subn(f'<script nonce="{nonce}">', html)
    if count == 0:  # FastAPI changed its page: fail loudly rather than serve a page whose script is blocked
        raise RuntimeError("FastAPI's Swagger UI page has no inline <script> to put the CSP nonce on")
    return HTMLResponse(html, headers={"Content-Security-Policy": docs_csp(nonce), "Cache-Control": "no-store"})


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for this app's OpenAPI document (no token, like ``/openapi.json``: it holds no data)."""
    app = request.app
    return swagger_page(app.title, app.openapi_url or "/openapi.json", request.scope.get("root_path", "").rstrip("/"))


@router.get(ASSETS_PREFIX + "/{name}")
def swagger_asset(name: str) -> FileResponse:
    """One of Swagger UI's files (:data:`ASSETS`); 404 for any other name."""
    if name not in ASSETS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs asset {name!r}; the assets are {', '.join(ASSETS)}")
    return FileResponse(assets_dir() / name, headers={"Cache-Control": "public, max-age=86400"})
