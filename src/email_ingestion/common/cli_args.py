"""Arguments every command shares."""

from __future__ import annotations

import argparse

from email_ingestion import __version__


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser
