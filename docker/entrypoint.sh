#!/usr/bin/env bash
# Entrypoint of the fpmon sidecar image: apply the database migrations, then serve.
#   (no argument) or `serve [options]`: fpmon db upgrade, then exec fpmon serve --host $FPMON_HOST [options]
#   anything else: run it as an fpmon command, e.g. `docker run IMAGE db current`
# FPMON_DB_UPGRADE_ATTEMPTS (default 10) tries, 3 s apart, in case the database is not accepting
# connections yet.
set -euo pipefail

if [[ $# -gt 0 && "$1" != "serve" ]]; then
    exec fpmon "$@"
fi
if [[ $# -gt 0 ]]; then
    shift  # "serve"
fi

host="${FPMON_HOST:-0.0.0.0}"
if [[ -z "${FPMON_API_TOKENS:-}" && -z "${FPMON_READ_TOKENS:-}" \
    && "$host" != "127.0.0.1" && "$host" != "localhost" && "$host" != "::1" ]]; then
    echo "fpmon-entrypoint: set FPMON_API_TOKENS (comma-separated bearer tokens): the sidecar refuses" \
        "to bind ${host} without authentication" >&2
    exit 2
fi

attempts="${FPMON_DB_UPGRADE_ATTEMPTS:-10}"
for ((i = 1; ; i++)); do
    if fpmon db upgrade; then
        break
    fi
    if ((i >= attempts)); then
        echo "fpmon-entrypoint: fpmon db upgrade failed ${attempts} times; giving up" >&2
        exit 1
    fi
    echo "fpmon-entrypoint: fpmon db upgrade failed (attempt ${i}/${attempts}); retrying in 3 s" >&2
    sleep 3
done

exec fpmon serve --host "$host" "$@"
