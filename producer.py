#!/usr/bin/env python3
"""Producer entry point: see `python producer.py --help` and src/producer/cli.py."""

import sys

from src.producer.cli import main

if __name__ == "__main__":
    sys.exit(main())
