"""Property-based fuzzing of the sidecar's OpenAPI (schemathesis): no request makes it answer 5xx.

The app is built at import (schemathesis parametrizes one test per operation from the schema): a fresh
migrated SQLite database in a temporary folder removed at exit, no workers (ingest and reads only).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

import storage
from api.main import create_app
from api.settings import Settings

#: examples per operation; FPMON_FUZZ_EXAMPLES=500 FPMON_FUZZ_RANDOM=1 for a longer, random exploration
FUZZ_EXAMPLES = int(os.environ.get("FPMON_FUZZ_EXAMPLES", "60"))
#: CI runs the same examples every time (a fuzz finding must not make CI flaky; explore locally)
DERANDOMIZE = os.environ.get("FPMON_FUZZ_RANDOM") != "1"

_folder = Path(tempfile.mkdtemp(prefix="fpmon-fuzz-"))
atexit.register(shutil.rmtree, _folder, ignore_errors=True)
_url = f"sqlite:///{_folder / 'fpmon.db'}"
storage.upgrade(_url)
app = create_app(Settings(database_url=_url, max_body_bytes=1_000_000), start_workers=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.exclude(path="/readyz").parametrize()  # 503 without workers is its documented answer
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
