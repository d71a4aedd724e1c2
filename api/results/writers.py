"""The tables of :mod:`api.results.tables` as files: CSV, JSON Lines or Parquet (docs/results.md).

* CSV (RFC 4180, UTF-8, a header row; one table per file): None is an empty cell, booleans ``true`` /
  ``false``, floats in Python's shortest round-trip form (``repr``: reads back to the same float), ``json``
  columns as compact JSON text.
* JSON Lines (UTF-8, one JSON object per line; any number of tables in one file): a ``{"kind": "run", …}``
  record (the run, ``RunOut``), then the rows of each table as ``{"kind": "step" | "alert" | "review", …}``
  with native JSON values (``json`` columns nested, None as null).
* Parquet (one table per file, needs pyarrow: ``pip install 'fpmon[parquet]'``): ``int`` → int64, ``float`` →
  float64, ``bool`` → bool, ``str`` and ``json`` (JSON text) → string; every column nullable; the file's
  metadata holds ``fpmon.table``, ``fpmon.run_id`` and ``fpmon.run_name``, each field's ``fpmon.kind``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Literal

from .backend import ResultsError
from .tables import Kind, Table, TableName

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")

#: the ``Content-Type`` of each format's download
MEDIA_TYPES: dict[Format, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}

#: the ``kind`` of a table's records in JSON Lines
RECORD_KINDS: dict[TableName, str] = {"steps": "step", "alerts": "alert", "reviews": "review"}

PARQUET_HINT = "Parquet export needs pyarrow: pip install 'fpmon[parquet]' (or export --format csv / jsonl)"


class ParquetUnavailable(ResultsError):
    """pyarrow is not installed."""

    def __init__(self) -> None:
        super().__init__(PARQUET_HINT, "unavailable")


def require_parquet() -> None:
    """Raise :class:`ParquetUnavailable` (naming the install command) unless pyarrow can be imported."""
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise ParquetUnavailable()


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def csv_cell(value: Any, kind: Kind) -> str:
    """One CSV cell (see the module docstring)."""
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if kind == "float":
        return repr(float(value))
    if kind == "json":
        return _json_text(value)
    return str(value)


def to_csv(table: Table) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(list(table.columns))
    for row in table.rows:
        writer.writerow([csv_cell(row[name], kind) for name, kind in table.columns.items()])
    return buffer.getvalue().encode("utf-8")


def to_jsonl(run: dict[str, Any], tables: list[Table]) -> bytes:
    lines = [_json_text({"kind": "run", **run})]
    for table in tables:
        kind = RECORD_KINDS[table.name]
        lines.extend(_json_text({"kind": kind, **row}) for row in table.rows)
    return ("\n".join(lines) + "\n").encode("utf-8")


def to_parquet(run: dict[str, Any], table: Table) -> bytes:
    try:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ParquetUnavailable() from exc
    types = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string(), "json": pa.string()}
    fields = [pa.field(name, types[kind], metadata={"fpmon.kind": kind}) for name, kind in table.columns.items()]
    schema = pa.schema(
        fields,
        metadata={"fpmon.table": table.name, "fpmon.run_id": str(run["run_id"]), "fpmon.run_name": run["name"]},
    )
    data = {
        name: [
            (None if row[name] is None else _json_text(row[name])) if kind == "json" else row[name]
            for row in table.rows
        ]
        for name, kind in table.columns.items()
    }
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(data, schema=schema), buffer)
    return buffer.getvalue()


def encode(run: dict[str, Any], tables: list[Table], fmt: Format) -> bytes:
    """The file's bytes: JSON Lines holds any number of tables; CSV and Parquet exactly one."""
    if fmt == "jsonl":
        return to_jsonl(run, tables)
    if len(tables) != 1:
        raise ResultsError(
            f"a {fmt} file holds one table, not {len(tables)}: choose steps, alerts or reviews", "invalid"
        )
    if fmt == "csv":
        return to_csv(tables[0])
    if fmt == "parquet":
        return to_parquet(run, tables[0])
    raise ResultsError(f"unknown format {fmt!r}: use one of {list(FORMATS)}", "invalid")


def file_stem(run: dict[str, Any]) -> str:
    """The run's name made safe as a file name (letters, digits, ``.``, ``_``, ``-``), else ``run<id>``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(run["name"])).strip("._")
    return safe[:100] or f"run{run['run_id']}"


def filename(run: dict[str, Any], fmt: Format, table: TableName | None) -> str:
    """``<stem>.<table>.<format>``, or ``<stem>.jsonl`` for a JSON Lines file of every table (``table`` None)."""
    return f"{file_stem(run)}.{fmt}" if table is None else f"{file_stem(run)}.{table}.{fmt}"
