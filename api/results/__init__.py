"""Results of finished or running runs, read from a sidecar (HTTP) or straight from its database (SQL).

Used by the ``fpmon runs / alerts / review / export`` commands (:mod:`api.results_cli`) and by the REST export
(``GET /v1/runs/{run_id}/export``, :mod:`api.routes.export`). Modules:

* :mod:`api.results.backend` — :class:`ResultsBackend`, the one interface both sources implement; the shapes it
  returns are the ``/v1`` API's JSON objects (runs, alerts with reviews, metric rows with evidence).
* :mod:`api.results.http` — :class:`HttpResults`: the ``/v1`` API through httpx (Bearer token).
* :mod:`api.results.sql` — :class:`SqlResults`: the database through :mod:`storage` (the API's converters, so
  the shapes are the same byte for byte).
* :mod:`api.results.tables` — a run's results as flat tables (``steps``, ``alerts``, ``reviews``).
* :mod:`api.results.writers` — those tables as CSV, JSON Lines or Parquet (the format is in docs/results.md).

Nothing here is imported by ``fpmon --help``: the commands import these modules when they run.
"""
