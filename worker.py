#!/usr/bin/env python3
"""Worker entry point from a checkout: `python worker.py --help`; installed, it is `email-worker`."""

import sys
from pathlib import Path

# A checkout run (systemd's ExecStart=python worker.py) needs no `pip install`.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from email_ingestion.worker.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
