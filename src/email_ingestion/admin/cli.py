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
    "config": ("email_ingestion.admin.config_show", "the settings in effect (secrets redacted) and where each came from"),
    "kit": ("email_ingestion.admin.kit", "copy the operator kit (config, alerts, dashboard, runbooks, units) to a directory"),
    "units": ("email_ingestion.admin.kit:units_main", "write systemd units that run this installation's commands"),
    "backup": ("email_ingestion.admin.backup", "snapshot Redis (BGSAVE) into a verified, checksummed backup file"),
    "restore": ("email_ingestion.admin.restore", "restore a backup file (verified first)"),
    "exporter": ("email_ingestion.monitoring.exporter", "standalone Prometheus exporter: queue gauges, Redis memory"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="email-ingest", description=__doc__.split("\n\n")[0])
    add_version(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in _PROGRAMS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def _program(name: str) -> Callable[[list[str] | None], int]:
    module_name, _, function = _PROGRAMS[name][0].partition(":")
    main: Callable[[list[str] | None], int] = getattr(importlib.import_module(module_name), function or "main")
    return main


def _env_file_first(args: list[str]) -> list[str]:
    """`--env-file F` is accepted anywhere (before or after the subcommand, after its own
    subcommand): it is moved to just after the subcommand's name, where every program's
    top-level parser reads it."""
    rest: list[str] = []
    found: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--env-file" and index + 1 < len(args):
            found = [arg, args[index + 1]]
            index += 2
            continue
        if arg.startswith("--env-file="):
            found = ["--env-file", arg.split("=", 1)[1]]
        else:
            rest.append(arg)
        index += 1
    if not found or not rest:
        return rest + found
    return [rest[0], *found, *rest[1:]]


@closed_pipe_is_quiet
def main(argv: Sequence[str] | None = None) -> int:
    args = _env_file_first(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    if args and args[0] in _PROGRAMS:
        # Programs whose parser takes its name from argv[0] call themselves "email-ingest
        # producer", as the operator typed it, in --help and errors.
        sys.argv[0] = f"email-ingest {args[0]}"
        return _program(args[0])(args[1:])
    parser.parse_args(args)
    parser.print_help()
    return 2
