"""What the operator commands share: the same settings as the services, one Redis client
built the same way, and the exit statuses they answer with."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec

import redis

from email_ingestion.common.cli_args import add_version
from email_ingestion.common.errors import SettingsError
from email_ingestion.common.keys import StreamKeys, dlq_stream
from email_ingestion.common.redis_client import make_redis
from email_ingestion.common.settings import Settings, load_settings

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_SETTINGS = 0, 1, 2
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_version(p)
    p.add_argument("--env-file", default=".env", help="settings file (default: .env, searched as the services do)")
    p.add_argument("--redis-url", help="REDIS_URL")
    p.add_argument("--stream", action="append",
                   help="a stream; repeat for several (WORKER_STREAMS, else REDIS_STREAM_NAME), as the workers read")
    p.add_argument("--group", help="WORKER_GROUP")
    return p


def load(args: argparse.Namespace, name: str) -> Settings | None:
    """The services' settings with this command's overrides; None (after one line) when invalid."""
    overrides = {"redis": {"url": args.redis_url, "stream_name": args.stream[0] if args.stream else None},
                 "worker": {"group": args.group, "streams": ",".join(args.stream) if args.stream else None}}
    try:
        settings = load_settings(overrides, env_file=args.env_file)
        make_redis(settings.redis)  # builds, connects nothing: a malformed REDIS_URL is a settings error
    except SettingsError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return None
    for warning in settings.warnings:
        print(f"{name}: warning: {warning}", file=sys.stderr)
    return settings


@dataclass(frozen=True)
class Target:
    """The stream, group and DLQ a command looks at, and the client to look with."""

    client: redis.Redis
    stream: str
    group: str
    dlq: str
    keys: StreamKeys


def target(settings: Settings) -> Target:
    stream, group = settings.redis.stream_name, settings.worker.group
    return Target(make_redis(settings.redis), stream, group, dlq_stream(stream, settings.retry.dlq_stream_name),
                  StreamKeys(stream=stream, group=group))


def targets(settings: Settings) -> list[Target]:
    """One Target per stream the workers read (WORKER_STREAMS / --stream, else
    REDIS_STREAM_NAME), sharing one client."""
    client, group = make_redis(settings.redis), settings.worker.group
    return [Target(client, stream, group, dlq_stream(stream, settings.retry.dlq_stream_name),
                   StreamKeys(stream=stream, group=group)) for stream in settings.worker_streams()]


def parse_duration_ms(text: str) -> int:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 500ms, 90s, 30m, 12h or 7d")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def server_ms(client: redis.Redis) -> int:
    """Redis's clock: ages and due times compare against the server, not this host."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def id_ms(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-", 1)[0])


P = ParamSpec("P")


def closed_pipe_is_quiet(main: Callable[P, int]) -> Callable[P, int]:
    """`email-ingest tail | head`: when the reader goes away, end quietly with 0, as `cat`
    does, instead of a BrokenPipeError traceback. stdout is pointed at /dev/null so the
    interpreter's final flush cannot raise again."""
    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    return wrapper
