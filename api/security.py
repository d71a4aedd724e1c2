"""The front door: authentication, then limits, then parsing, for every request; security headers on every
answer; no token in the access log.

Two pure ASGI middlewares (they see a request before FastAPI reads its body):

* :class:`SecurityHeaders` (outermost) adds ``Content-Security-Policy``, ``X-Frame-Options``,
  ``X-Content-Type-Options`` and ``Referrer-Policy`` to every response, its own and FastAPI's, and answers an
  exception that escaped the app with a 500 problem (then re-raises it, so that the server logs it).
* :class:`FrontDoor` checks, in this order and each before the next costs anything:

  1. the bearer token of a ``/v1`` request, from its headers alone (401 missing or unknown, 403 a read token
     on a write; GET and HEAD read, every other method writes), in constant time;
  2. the body's size: the ``Content-Length`` first, then a running count while the body streams in (413):
     ``max_body_bytes`` for step ingest, ``max_json_bytes`` for every other route;
  3. the nesting of a JSON body (422 beyond ``max_json_depth``), before FastAPI parses and validates it.

  An answer given before the request's body has been read says ``Connection: close``, so that the server drops
  the connection instead of reading (and discarding) the rest of a large body.

The routes keep their own ``ReadAuth``/``WriteAuth`` dependencies (``api.deps``, the same check) as a second
line and for the OpenAPI document.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import internal_error, problem_response
from .metrics import Metrics
from .settings import Settings

# ------------------------------------------------------------------------------------------------ tokens

MISSING_TOKEN = "missing bearer token: send 'Authorization: Bearer <token>'"
INVALID_TOKEN = "invalid bearer token"
READ_ONLY_TOKEN = "this token is read-only; writes need a write token"
#: methods a read token may use; every other method on /v1 is a write
READ_METHODS = frozenset({"GET", "HEAD"})


def _matches(token: bytes, candidates: Iterable[str]) -> bool:
    """Whether ``token`` is one of ``candidates``, in time independent of where (or whether) it matches:
    ``hmac.compare_digest`` against every candidate, no early exit."""
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(token, candidate.encode("utf-8"))
    return found


def token_access(settings: Settings, token: str | bytes | None) -> Literal["write", "read"] | None:
    """What ``token`` may do: ``write`` (FPMON_API_TOKENS), ``read`` (FPMON_READ_TOKENS) or nothing."""
    if token is None:
        return None
    raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token
    is_write = _matches(raw, settings.api_tokens)
    is_read = _matches(raw, settings.read_tokens)
    return "write" if is_write else "read" if is_read else None


def auth_refusal(settings: Settings, token: str | bytes | None, write: bool) -> tuple[int, str] | None:
    """``(status, message)`` refusing this token on a read or write route, or None when it may pass (always when
    no token is configured): 401 for a missing or unknown token, 403 for a read token on a write route."""
    if not settings.auth_enabled:
        return None
    if token is None:
        return 401, MISSING_TOKEN
    access = token_access(settings, token)
    if access is None:
        return 401, INVALID_TOKEN
    if write and access != "write":
        return 403, READ_ONLY_TOKEN
    return None


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the first ``Authorization: Bearer <token>`` header (None when absent or another scheme),
    read like FastAPI's ``HTTPBearer``."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, param = value.strip().partition(b" ")
            param = param.strip()
            return param if scheme.lower() == b"bearer" and param else None
    return None


# --------------------------------------------------------------------------------------------- headers

#: the review page (api/page) loads only its own files: one external script, a module script and
#: two stylesheets, no inline script or <style>; app.js positions alert markers with style attributes
#: (style-src-attr; browsers without CSP 3 fall back to style-src); the favicon is a data: URI.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; style-src-elem 'self'; "
    "style-src-attr 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; font-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: /docs (Swagger UI, api.routes.docs) sets its own policy: this origin only, and its inline script by nonce
#: everything else is data (JSON, metrics, problems): nothing in it may load or run anything
API_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
COMMON_HEADERS = (
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)


def security_headers(path: str) -> list[tuple[str, str]]:
    """The security headers of a response to ``path``."""
    csp = PAGE_CSP if path == "/" or path.startswith("/review/") else API_CSP
    return [("content-security-policy", csp), *COMMON_HEADERS]


def _add_missing(message: Message, headers: Iterable[tuple[str, str]]) -> None:
    mutable = MutableHeaders(scope=message)
    for name, value in headers:
        if name not in mutable:
            mutable.append(name, value)


class SecurityHeaders:
    """Security headers on every response; an escaped exception answered with a 500 problem, then re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = security_headers(scope["path"])
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                _add_missing(message, headers)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if not started:
                response = internal_error(Request(scope), exc)
                await response(scope, receive, send_with_headers)
            raise  # the server logs it (and a test client raises it)


def internal_error_with_headers(request: Request, exc: Exception) -> Response:
    """The app's handler of last resort (Starlette's ``ServerErrorMiddleware``): a 500 problem with the security
    headers (it answers outside :class:`SecurityHeaders`)."""
    response = internal_error(request, exc)
    for name, value in security_headers(request.url.path):
        response.headers.setdefault(name, value)
    return response


# ------------------------------------------------------------------------------------------- front door

#: the one route whose body is not JSON: a step's safetensors payload, limited by max_body_bytes
STEP_ROUTE = re.compile(r"^/v1/runs/[^/]+/steps/?$")
#: methods whose body FastAPI parses as JSON on the JSON routes
JSON_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTooLarge(StarletteHTTPException):
    """Raised by the counting ``receive`` when a streamed body passes its limit (FastAPI answers it: 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body exceeds the limit of {limit} bytes")


def json_too_deep(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests arrays/objects deeper than ``limit`` (False when it is not JSON:
    the route's parser answers that). Nesting deeper than Python's recursion limit counts as too deep."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    try:
        value = json.loads(body)
    except RecursionError:
        return True
    except ValueError:
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """``(declared Content-Length or None, whether a body may follow)``."""
    declared: int | None = None
    chunked = False
    for name, value in headers:
        name = name.lower()
        if name == b"content-length" and value.strip().isdigit():
            declared = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked or bool(declared)


class FrontDoor:
    """Authentication, then the body's size, then a JSON body's depth, before the app reads a byte of the body
    (see the module docstring). ``metrics`` counts the refusals (``fpmon_requests_rejected_total``)."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics | None = None) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason=reason).inc()

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        detail: str,
        close: bool,
        headers: dict[str, str] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        headers = dict(headers or {})
        if close:
            headers["connection"] = "close"
        await problem_response(status, detail, errors, headers)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings
        path, method = scope["path"], scope["method"]
        declared, has_body = _content_length(scope["headers"])

        # 1. authentication, from the headers alone
        if path == "/v1" or path.startswith("/v1/"):
            token = bearer_token(scope["headers"])
            refusal = auth_refusal(settings, token, write=method not in READ_METHODS)
            if refusal is not None:
                status, detail = refusal
                self._count("auth")
                extra = {"www-authenticate": "Bearer"} if status == 401 else None
                await self._refuse(scope, receive, send, status, detail, has_body, extra)
                return

        # 2. the body's size: declared, then counted
        step_route = STEP_ROUTE.match(path) is not None
        limit = settings.max_body_bytes if step_route else settings.max_json_bytes
        if declared is not None and declared > limit:
            self._count("too_large")
            detail = f"body of {declared} bytes exceeds the limit of {limit} bytes"
            await self._refuse(scope, receive, send, 413, detail, True)
            return
        if has_body and not step_route and method in JSON_BODY_METHODS:
            await self._json_route(scope, receive, send, limit)
            return
        await self._streamed(scope, receive, send, limit, has_body)

    async def _json_route(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Read the (small) body here, counting; refuse it too large or (3.) too deep; then hand it on."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            if len(body) > limit:
                self._count("too_large")
                await self._refuse(scope, receive, send, 413, f"body exceeds the limit of {limit} bytes", True)
                return
            if not message.get("more_body", False):
                break
        depth = self.settings.max_json_depth
        if json_too_deep(bytes(body), depth):
            self._count("too_deep")
            detail = f"JSON body nested deeper than {depth} levels"
            errors = [{"loc": ["body"], "msg": detail, "type": "json_too_deep"}]
            await self._refuse(scope, receive, send, 422, detail, False, errors=errors)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int, has_body: bool) -> None:
        """Hand the body on as it streams in, counting; an answer before its end closes the connection."""
        size = 0
        complete = not has_body
        started = False

        async def counted() -> Message:
            nonlocal size, complete
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    self._count("too_large")
                    raise BodyTooLarge(limit)
                if not message.get("more_body", False):
                    complete = True
            return message

        async def send_closing(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not complete:
                    _add_missing(message, [("connection", "close")])
            await send(message)

        try:
            await self.app(scope, counted, send_closing)
        except BodyTooLarge as exc:
            if started:
                raise
            await self._refuse(scope, receive, send, 413, str(exc.detail), True)


# ------------------------------------------------------------------------------------------ access log


class RedactQueryString(logging.Filter):
    """Drops the query string from uvicorn's access log lines (a token sent as ``?token=…`` must not be logged):
    ``GET /v1/runs?token=x`` is logged as ``GET /v1/runs?[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            path = args[2].split("?", 1)[0]
            record.args = (*args[:2], f"{path}?[redacted]", *args[3:])
        return True


def install_access_log_redaction(logger_name: str = "uvicorn.access") -> None:
    """Add :class:`RedactQueryString` to uvicorn's access logger, once (``logging.config`` keeps it)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactQueryString) for f in logger.filters):
        logger.addFilter(RedactQueryString())
