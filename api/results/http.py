"""The results of a sidecar, through its ``/v1`` API (httpx, Bearer token): :class:`HttpResults`.

Long listings are read in pages: runs and alerts 1000 at a time (the API's largest ``limit``); metric rows in
windows of :data:`WINDOW` consecutive step numbers, which hold at most that many steps and so are never
decimated by ``GET /v1/runs/{id}/metrics`` (``max_points`` = :data:`WINDOW`), each window starting at the first
processed step after the previous one (a ``max_points=2`` probe: its first row), so gaps in the step numbers
cost no empty requests.
"""

from __future__ import annotations

from typing import Any

import httpx

from .backend import ResultsError, parse_run_ref, run_not_found

#: the API's largest page of runs or alerts (``limit``)
PAGE = 1000
#: step numbers per metrics request (the API's largest ``max_points``)
WINDOW = 100_000


class HttpResults:
    """:class:`api.results.backend.ResultsBackend` over HTTP.

    Args:
        url: the sidecar's base URL, e.g. ``http://127.0.0.1:8700``.
        token: a read token (or a write token, needed by :meth:`review`); None when the sidecar has no tokens.
        timeout: seconds per request.
        transport: an httpx transport (tests); None: the network.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    # -------------------------------------------------------------------------------------------- requests
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ResultsError(
                f"cannot reach the sidecar at {self.url} ({type(exc).__name__}: {exc}); start it with `fpmon serve`, "
                "check --url / FPMON_URL, or read the database directly with --database-url"
            ) from exc
        if response.is_success:
            try:
                return response.json()
            except ValueError as exc:
                raise ResultsError(
                    f"{self.url} answered {method} {path} with something other than JSON: is it an fpmon sidecar? "
                    "(check --url / FPMON_URL)"
                ) from exc
        detail = _detail(response)
        code = response.status_code
        if code == 404:
            raise ResultsError(detail, "not_found")
        if code in (401, 403):
            need = "a write token" if method != "GET" else "a read or write token"
            raise ResultsError(f"{detail} (HTTP {code}): pass {need} with --token or FPMON_TOKEN", "auth")
        if code == 422:
            raise ResultsError(f"refused by the sidecar: {detail}", "invalid")
        raise ResultsError(f"the sidecar at {self.url} answered {method} {path} with HTTP {code}: {detail}")

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params={k: v for k, v in params.items() if v is not None})

    # ------------------------------------------------------------------------------------------- interface
    def list_runs(self, limit: int) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        while len(runs) < limit:
            size = min(PAGE, limit - len(runs))
            page = self._get("/v1/runs", limit=size, offset=len(runs))["runs"]
            runs.extend(page)
            if len(page) < size:
                break
        return runs

    def find_run(self, ref: str) -> dict[str, Any]:
        run_id = parse_run_ref(ref)
        if run_id is not None:
            try:
                run: dict[str, Any] = self._get(f"/v1/runs/{run_id}")
                return run
            except ResultsError as exc:
                if exc.kind != "not_found":
                    raise
        offset = 0
        while True:  # no lookup by name in the API: read the runs page by page
            page = self._get("/v1/runs", limit=PAGE, offset=offset)["runs"]
            for candidate in page:
                if candidate["name"] == ref:
                    return dict(candidate)
            if len(page) < PAGE:
                raise run_not_found(ref)
            offset += PAGE

    def list_alerts(self, run_id: int | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = []
        while len(alerts) < limit:
            size = min(PAGE, limit - len(alerts))
            page = self._get("/v1/alerts", run_id=run_id, status=status, limit=size, offset=len(alerts))["alerts"]
            alerts.extend(page)
            if len(page) < size:
                break
        return alerts

    def review(self, alert_id: int, decision: str, reviewer: str, note: str | None, rebaseline: bool) -> dict[str, Any]:
        body = {"decision": decision, "reviewer": reviewer, "note": note, "rebaseline": rebaseline}
        alert: dict[str, Any] = self._request("POST", f"/v1/alerts/{alert_id}/review", json=body)
        return alert

    def metric_rows(self, run_id: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        start = 0
        while True:
            probe = self._get(f"/v1/runs/{run_id}/metrics", start=start, max_points=2)["rows"]
            if not probe:
                return rows
            first = int(probe[0]["step"])
            end = first + WINDOW - 1
            page = self._get(f"/v1/runs/{run_id}/metrics", start=first, end=end, max_points=WINDOW, evidence="all")[
                "rows"
            ]
            rows.extend(page)
            start = end + 1

    def run_alerts(self, run_id: int) -> list[dict[str, Any]]:
        listed: dict[int, dict[str, Any]] = {}
        offset = 0
        while True:  # newest first: an alert raised meanwhile shifts the pages; ids are kept once
            page = self._get("/v1/alerts", run_id=run_id, limit=PAGE, offset=offset)["alerts"]
            listed.update({int(a["alert_id"]): a for a in page})
            if len(page) < PAGE:
                break
            offset += PAGE
        # the listing carries no reviews: read each alert (one request per alert; a run raises few)
        return [self._get(f"/v1/alerts/{alert_id}") for alert_id in sorted(listed)]

    def close(self) -> None:
        self.client.close()


def _detail(response: httpx.Response) -> str:
    """The problem's ``detail`` (RFC 9457), else the body's first 300 characters."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return str(body)[:300]
