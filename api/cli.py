"""The ``fpmon`` command, assembled here (its composition root), and the server's commands beside the server.

``fpmon`` = the library's commands (:data:`monitor.cli.app`: ``demo``, ``analyze``, ``sync``) + the sidecar's,
defined here: ``serve`` (REST API + compute workers), ``db upgrade`` and ``db current`` (the schema's Alembic
migrations) + the results commands of :mod:`api.results_cli` (``runs``, ``alerts``, ``review``, ``export``).
The console script ``fpmon`` and ``python -m api.cli`` both run :data:`app`. The dependency runs one
way: this module imports :mod:`monitor.cli`, and no module of ``monitor`` imports the server.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from monitor import cli as library_cli

from . import results_cli

app = typer.Typer(name="fpmon", help=library_cli.HELP, no_args_is_help=True, add_completion=False)
app.registered_commands.extend(library_cli.app.registered_commands)  # demo, analyze, sync
app.registered_commands.extend(results_cli.app.registered_commands)  # runs, alerts, review, export

db_app = typer.Typer(help="Database schema management (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _console() -> Console:
    # at least 120 columns, so that database URLs and messages are not wrapped in logs and CI
    return Console(width=max(Console().width, 120))


def _database_url(url: str | None) -> str:
    from .settings import Settings

    return url or Settings().database_url


@db_app.command("upgrade")
def db_upgrade(
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: FPMON_DATABASE_URL or sqlite:///./fpmon.db)")
    ] = None,
) -> None:
    """Apply the migrations up to the version this fpmon expects."""
    from storage import upgrade

    url = _database_url(database_url)
    revision = upgrade(url)
    _console().print(f"database {url} is at revision {revision}")


@db_app.command("current")
def db_current(database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None) -> None:
    """Print the database's revision and the one this fpmon expects."""
    from storage import current_revision, head_revision, make_engine

    url = _database_url(database_url)
    _console().print(f"database: {current_revision(make_engine(url))}; fpmon expects: {head_revision()}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8700).")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default sqlite:///./fpmon.db).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    workers: Annotated[int | None, typer.Option(help="Compute workers (processes by default).")] = None,
) -> None:
    """Run the sidecar (REST API + compute workers). Settings also come from FPMON_* variables."""
    import uvicorn

    from storage import SchemaError

    from .main import create_app
    from .security import install_access_log_redaction
    from .settings import Settings

    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "host": host,
            "port": port,
            "database_url": database_url,
            "device": device,
            "workers": workers,
        }.items()
        if value is not None
    }
    try:
        settings = Settings(**overrides)  # a bad FPMON_* value (e.g. a webhook URL) is a ValueError too
        application = create_app(settings)
    except (SchemaError, ValueError) as exc:
        _console().print(f"[bold red]fpmon serve: {exc}[/]")
        raise typer.Exit(code=2) from exc
    install_access_log_redaction()  # no query string (a token sent as ?token=…) in the access log
    uvicorn.run(application, host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    app()
