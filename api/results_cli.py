"""``fpmon runs``, ``fpmon alerts``, ``fpmon review`` and ``fpmon export``: a run's results from the command line.

Each command reads one source (docs/results.md):

* a sidecar, ``--url`` (or ``FPMON_URL``), with ``--token`` (or ``FPMON_TOKEN``) sent as a Bearer token;
* its database, ``--database-url`` (or ``FPMON_DATABASE_URL``);
* neither given: the sidecar's default database, ``sqlite:///./fpmon.db`` (it must exist).

An explicit option beats an environment variable, and ``--url`` / ``FPMON_URL`` beats ``--database-url`` /
``FPMON_DATABASE_URL`` of the same rank; ``--url`` with ``--database-url`` is refused. A run (``RUN``) is
named by its id or its name: a decimal integer is the run with that id (or, when there is none, the run of
that name), anything else a name. Tables by default (rich), ``--json`` for the API's JSON objects.

Only typer and rich are imported with this module (``fpmon --help`` stays fast): httpx, SQLAlchemy, the
API's schemas and pyarrow come in when a command runs.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from .results.backend import ResultsBackend, RunResults
    from .results.tables import Table as ResultsTable
    from .results.writers import Format

app = typer.Typer(add_completion=False)


class AlertStatus(StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    confirmed = "confirmed"
    dismissed = "dismissed"


class ExportFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


class ExportTable(StrEnum):
    all = "all"
    steps = "steps"
    alerts = "alerts"
    reviews = "reviews"


Url = Annotated[
    str | None,
    typer.Option(
        "--url", help="The sidecar's base URL, e.g. http://127.0.0.1:8700 (default: FPMON_URL).", show_default=False
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token", help="Bearer token for --url (default: FPMON_TOKEN); review needs a write token.", show_default=False
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Read the sidecar's database directly (default: FPMON_DATABASE_URL, else sqlite:///./fpmon.db).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON objects instead of a table.")]


def _console(stderr: bool = False) -> Console:
    return Console(width=max(Console().width, 120), stderr=stderr)


def open_backend(url: str | None, token: str | None, database_url: str | None) -> ResultsBackend:
    """The source the options and environment name (see the module docstring)."""
    if url and database_url:
        raise typer.BadParameter("give either --url (a sidecar) or --database-url (its database), not both")
    url = url or (None if database_url else os.environ.get("FPMON_URL") or None)
    if url:
        from .results.http import HttpResults

        return HttpResults(url, token or os.environ.get("FPMON_TOKEN") or None)
    from .results.sql import SqlResults
    from .settings import Settings

    settings = Settings()  # FPMON_DATABASE_URL (else the sidecar's default) and FPMON_LIVE_WINDOW_S
    return SqlResults(database_url or settings.database_url, live_window_s=settings.live_window_s)


@contextmanager
def results_source(command: str, url: str | None, token: str | None, database_url: str | None) -> Iterator[Any]:
    """The backend, closed afterwards; a :class:`ResultsError` becomes ``fpmon COMMAND: message`` and exit 1."""
    from .results.backend import ResultsError

    backend = None
    try:
        backend = open_backend(url, token, database_url)
        yield backend
    except ResultsError as exc:
        _console(stderr=True).print(
            f"fpmon {command}: {exc}", style="bold red", markup=False, highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=1) from exc
    finally:
        if backend is not None:
            backend.close()


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _short(text: str | None, size: int = 60) -> str:
    text = text or ""
    return text if len(text) <= size else text[: size - 1] + "…"


@app.command("runs")
def runs_command(
    url: Url = None,
    token: Token = None,
    database_url: DatabaseUrl = None,
    limit: Annotated[int, typer.Option(help="Most runs listed (by id).", min=1)] = 100,
    as_json: AsJson = False,
) -> None:
    """List the runs: id, name, live/idle, steps processed / received, open alerts."""
    with results_source("runs", url, token, database_url) as backend:
        runs = backend.list_runs(limit)
    if as_json:
        _echo_json(runs)
        return
    table = Table("id", "name", "status", "processed / received", "open alerts", "last step at")
    for r in runs:
        table.add_row(
            str(r["run_id"]),
            r["name"],
            r["status"],
            f"{r['steps_processed']} / {r['steps_received']}",
            str(r["open_alerts"]),
            r["last_step_at"] or "-",
        )
    _console().print(table if runs else "no runs")


@app.command("alerts")
def alerts_command(
    run: Annotated[str | None, typer.Option("--run", help="Only this run (id or name).", show_default=False)] = None,
    status: Annotated[
        AlertStatus | None, typer.Option(help="Only alerts with this status.", show_default=False)
    ] = None,
    url: Url = None,
    token: Token = None,
    database_url: DatabaseUrl = None,
    limit: Annotated[int, typer.Option(help="Most alerts listed (newest first).", min=1)] = 100,
    as_json: AsJson = False,
) -> None:
    """List alerts, newest first: id, run, step, type, status, the first reason."""
    with results_source("alerts", url, token, database_url) as backend:
        run_id = int(backend.find_run(run)["run_id"]) if run is not None else None
        alerts = backend.list_alerts(run_id, status.value if status else None, limit)
    if as_json:
        _echo_json(alerts)
        return
    table = Table("id", "run", "step", "type", "status", "created at", "reason")
    for a in alerts:
        reasons = a.get("reasons") or [""]
        table.add_row(
            str(a["alert_id"]),
            str(a["run_id"]),
            str(a["step"]),
            a["type"],
            a["status"],
            a["created_at"],
            _short(reasons[0]),
        )
    _console().print(table if alerts else "no alerts")


@app.command("review")
def review_command(
    alert: Annotated[int, typer.Argument(help="The alert's id (`fpmon alerts` lists them).", min=1)],
    confirm: Annotated[bool, typer.Option("--confirm", help="A real problem.")] = False,
    dismiss: Annotated[bool, typer.Option("--dismiss", help="A false alarm (or the run's new normal).")] = False,
    acknowledge: Annotated[bool, typer.Option("--acknowledge", help="Seen, not decided yet.")] = False,
    reopen: Annotated[
        bool, typer.Option("--reopen", help="Back to open (an acknowledged, confirmed or dismissed alert).")
    ] = False,
    note: Annotated[str | None, typer.Option(help="Why (kept with the review).", show_default=False)] = None,
    reviewer: Annotated[
        str | None, typer.Option(help="Who decides (default: FPMON_REVIEWER, else your user name).", show_default=False)
    ] = None,
    rebaseline: Annotated[
        bool, typer.Option("--rebaseline", help="With --dismiss: the change is the run's new normal (re-baseline).")
    ] = False,
    url: Url = None,
    token: Token = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Record a decision on an alert: exactly one of --confirm, --dismiss, --acknowledge, --reopen (the earlier
    decisions stay in the alert's history)."""
    decisions = (("confirmed", confirm), ("dismissed", dismiss), ("acknowledged", acknowledge), ("open", reopen))
    chosen = [d for d, on in decisions if on]
    if len(chosen) != 1:
        raise typer.BadParameter("exactly one of --confirm --dismiss --acknowledge --reopen")
    who = reviewer or os.environ.get("FPMON_REVIEWER") or _user_name()
    with results_source("review", url, token, database_url) as backend:
        result = backend.review(alert, chosen[0], who, note, rebaseline)
    if as_json:
        _echo_json(result)
        return
    _console().print(
        f"alert {result['alert_id']} (run {result['run_id']}, step {result['step']}): {result['status']} by {who}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (some containers)
        return "cli"


@app.command("export")
def export_command(
    run: Annotated[str, typer.Argument(help="The run: its id or its name.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="File format.")] = ExportFormat.csv,
    table: Annotated[
        ExportTable, typer.Option(help="Which table; all: every table (csv / parquet: one file each).")
    ] = ExportTable.all,
    output: Annotated[
        Path | None,
        typer.Option(
            help="One file: its path ('-': stdout; a directory: the default name in it). Several files (csv / "
            "parquet, --table all): their directory. Default: the current directory, <run>.<table>.<format>.",
            show_default=False,
        ),
    ] = None,
    url: Url = None,
    token: Token = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Export a run's steps (observables, extra scalars, evidence), alerts and reviews (docs/results.md)."""
    from .results.backend import collect
    from .results.tables import TABLES, TableName, build
    from .results.writers import require_parquet

    names: tuple[TableName, ...] = TABLES if table is ExportTable.all else (cast("TableName", table.value),)
    to_stdout = output is not None and str(output) == "-"
    if to_stdout and fmt is not ExportFormat.jsonl and len(names) > 1:
        raise typer.BadParameter("several files cannot go to stdout: choose --table, or --format jsonl")
    with results_source("export", url, token, database_url) as backend:
        if fmt is ExportFormat.parquet:
            require_parquet()
        results = collect(backend, run)
        written = _write_export(results, build(results, names), fmt.value, output)
    if written is None:  # the bytes went to stdout
        return
    if as_json:
        _echo_json({"run_id": results.run["run_id"], "name": results.run["name"], "files": written})
        return
    console = _console()
    for w in written:
        console.print(f"{w['table']}: {w['rows']} rows -> {w['path']}", markup=False, highlight=False, soft_wrap=True)


def _write_export(
    results: RunResults, tables: list[ResultsTable], fmt: Format, output: Path | None
) -> list[dict[str, Any]] | None:
    """Write the export: one file per table for csv / parquet with several tables (into the folder ``output``,
    default the current one), else one file (``output``: its path, a folder for the default name, ``-`` for
    stdout). Returns ``[{"table", "rows", "path"}]``, or None after writing to stdout."""
    from .results.backend import ResultsError
    from .results.writers import encode, filename

    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(encode(results.run, tables, fmt))
        sys.stdout.flush()
        return None
    written: list[dict[str, Any]] = []
    try:
        if fmt != "jsonl" and len(tables) > 1:
            folder = output or Path(".")
            folder.mkdir(parents=True, exist_ok=True)
            for t in tables:
                path = folder / filename(results.run, fmt, t.name)
                path.write_bytes(encode(results.run, [t], fmt))
                written.append({"table": t.name, "rows": len(t.rows), "path": str(path)})
            return written
        data = encode(results.run, tables, fmt)
        default = filename(results.run, fmt, None if len(tables) > 1 else tables[0].name)
        path = output / default if output is not None and output.is_dir() else output or Path(default)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise ResultsError(f"cannot write the export: {exc}", "invalid") from exc
    return [{"table": t.name, "rows": len(t.rows), "path": str(path)} for t in tables]
