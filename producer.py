#!/usr/bin/env python3
"""Producer entry point from a checkout: `python producer.py --help`; installed, it is `email-producer`."""

import sys
from pathlib import Path

# A checkout run (systemd's ExecStart=python producer.py) needs no `pip install`.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from email_ingestion.producer.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
