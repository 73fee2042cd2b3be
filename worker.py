#!/usr/bin/env python3
"""Worker entry point: see `python worker.py --help` and src/worker/cli.py."""

import sys

from src.worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
