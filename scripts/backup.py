#!/usr/bin/env python3
"""Thin wrapper: the logic lives in the package (`email-ingest backup`, email_ingestion/admin/backup.py),
so a server installed with pip has it without a checkout."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from email_ingestion.admin.backup import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
