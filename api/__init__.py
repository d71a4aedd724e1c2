"""The fpmon sidecar: a FastAPI service that ingests step payloads and serves observables and alerts."""
