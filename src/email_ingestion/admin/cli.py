"""email-ingest: one entry point for operators.

Each subcommand hands the rest of the command line to the program it names, so
`email-ingest worker --burst` is `email-worker --burst`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from email_ingestion.admin.common import closed_pipe_is_quiet
from email_ingestion.common.cli_args import add_version

# name -> (module with main(argv), one-line help); imported only when chosen.
_PROGRAMS: dict[str, tuple[str, str]] = {
    "producer": ("email_ingestion.producer.cli", "follow a mailbox into the stream (email-producer)"),
    "worker": ("email_ingestion.worker.cli", "consume the stream through the group (email-worker)"),
    "dlq": ("email_ingestion.worker.dlq_admin", "inspect, replay and purge the dead-letter queue (email-dlq)"),
    "auth": ("email_ingestion.auth.oauth2_gmail", "set up, inspect, refresh or revoke the Gmail token"),
    "status": ("email_ingestion.admin.status", "mailboxes, stream, workers, retries and DLQ; exit 0 healthy, 1 degraded"),
    "tail": ("email_ingestion.admin.tail", "summaries of the newest payloads (no addresses or subjects by default)"),
    "consumers": ("email_ingestion.admin.consumers", "list consumers; prune dead ones with nothing pending"),
    "mailbox": ("email_ingestion.admin.mailbox", "show or reset a mailbox's stored position (re-ingest, backfill)"),
    "exporter": ("email_ingestion.monitoring.exporter", "standalone Prometheus exporter: queue gauges, Redis memory"),
    "console": ("email_ingestion.console.cli", "web console: overview, dead letters, search; `console users` (docs/console.md)"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="email-ingest", description=__doc__.split("\n\n")[0])
    add_version(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in _PROGRAMS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def _program(name: str) -> Callable[[list[str] | None], int]:
    module = importlib.import_module(_PROGRAMS[name][0])
    main: Callable[[list[str] | None], int] = module.main
    return main


@closed_pipe_is_quiet
def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if args and args[0] in _PROGRAMS:
        return _program(args[0])(args[1:])
    parser.parse_args(args)
    parser.print_help()
    return 2
