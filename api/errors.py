"""Every error in one shape: RFC 9457 problem details (``application/problem+json``).

``{"type": "about:blank", "title": <the status phrase>, "status": <code>, "detail": <a readable sentence>}``,
plus ``errors: [{"loc": [...], "msg": ..., "type": ...}]`` for a request that fails validation. ``detail`` is
always a plain string (clients, e.g. ``monitor.client.sinks``, show it as the error's message).

The handlers cover FastAPI's validation errors, every ``HTTPException`` (the routes', the router's 404/405,
the static files' 404) and any other exception (500; the server logs it, its text is never sent). The OpenAPI document
says so too: :func:`problem_openapi` rewrites every 4xx/5xx response of the schema to the ``Problem`` model
with this media type.
"""

from __future__ import annotations

import http
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: most validation errors listed in one answer (a 1 MiB body could otherwise carry thousands)
MAX_LISTED_ERRORS = 20
#: longest string of a validation message or location kept in an answer
MAX_TEXT = 500


def clean_text(value: object, limit: int = MAX_TEXT) -> str:
    """``value`` as text that always encodes to UTF-8: lone surrogates become ``\\udXXX`` escapes, cut to
    ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def title_of(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(status: int, detail: str, errors: Sequence[Mapping[str, Any]] | None = None) -> bytes:
    """The JSON bytes of a problem document."""
    body: dict[str, Any] = {"type": "about:blank", "title": title_of(status), "status": status}
    body["detail"] = clean_text(detail, limit=4000)
    if errors is not None:
        body["errors"] = list(errors)
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def problem_response(
    status: int,
    detail: str,
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A problem-details response (for routes, handlers and the middlewares' early answers)."""
    return Response(
        problem_body(status, detail, errors), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def validation_errors(raw: Iterable[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI error dicts reduced to ``loc``, ``msg`` and ``type``: the offending ``input`` is never
    echoed (it may be a megabyte, or hold text that cannot be encoded)."""
    errors: list[dict[str, Any]] = []
    for item in raw:
        if len(errors) >= MAX_LISTED_ERRORS:
            break
        if not isinstance(item, Mapping):
            errors.append({"loc": [], "msg": clean_text(item), "type": "value_error"})
            continue
        loc = [
            part if isinstance(part, int) and not isinstance(part, bool) else clean_text(part, 200)
            for part in item.get("loc", ())
        ]
        errors.append(
            {"loc": loc, "msg": clean_text(item.get("msg", "")), "type": clean_text(item.get("type", ""), 100)}
        )
    return errors


def describe(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence naming each offending field, e.g. ``body.name: String should have at least 1 character``."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more if parts else "invalid request"


class FieldError(StarletteHTTPException):
    """An ``HTTPException`` naming the offending field (``loc``): a route's own check, answered like pydantic's."""

    def __init__(self, status_code: int, loc: Sequence[str | int], message: str) -> None:
        super().__init__(status_code, message)
        self.loc = list(loc)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if isinstance(exc, FieldError):
        errors = validation_errors([{"loc": exc.loc, "msg": exc.detail, "type": "value_error"}])
        return problem_response(exc.status_code, describe(errors), errors, headers)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
    return problem_response(exc.status_code, detail, headers=headers)


async def validation_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    return problem_response(422, describe(errors), errors)


def internal_error(request: Request, exc: Exception) -> Response:
    """500 for an exception no handler took, never described to the client (the server logs its traceback:
    Starlette re-raises it after this answer)."""
    return problem_response(500, "internal server error; the sidecar's log has the details")


def install_error_handlers(app: FastAPI, internal: Callable[[Request, Exception], Response] = internal_error) -> None:
    """Problem details for validation errors, HTTP exceptions and (``internal``) everything else."""
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.add_exception_handler(Exception, internal)


# ------------------------------------------------------------------------------------------------ OpenAPI

#: answers any /v1 operation may give besides those it documents itself (the front door's and FastAPI's)
COMMON_V1_ERRORS = {
    "401": "Missing or invalid bearer token",
    "403": "A read-only token on a write route",
    "413": "The body exceeds the route's limit (FPMON_MAX_JSON_BYTES; FPMON_MAX_BODY_BYTES for steps)",
    "422": "The request fails validation (the offending fields are listed in errors)",
}


def problem_openapi(app: FastAPI, problem_schema: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` that documents every 4xx/5xx as ``application/problem+json`` (the ``Problem`` model,
    ``problem_schema``), adds the front door's answers to each ``/v1`` operation, and drops FastAPI's
    ``HTTPValidationError``. Install it before the document is first built."""
    build = app.openapi  # FastAPI's own (it caches the document on app.openapi_schema)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for name, definition in problem_schema.get("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault("Problem", {k: v for k, v in problem_schema.items() if k != "$defs"})
        content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if path.startswith("/v1/"):
                    for code, description in COMMON_V1_ERRORS.items():
                        responses.setdefault(code, {"description": description})
                for code, response in responses.items():
                    if code[:1] in ("4", "5"):
                        response["content"] = dict(content)
                        if response.get("description") in (None, "", "Validation Error"):
                            response["description"] = COMMON_V1_ERRORS.get(code, title_of(int(code)))
        app.openapi_schema = schema
        return schema

    return openapi
