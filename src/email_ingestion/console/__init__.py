"""The web console (`email-ingest console`): overview, DLQ, search, audit; see docs/console.md."""
