"""`email-ingest config show [--json]`: the settings in effect, secrets redacted, and where
each value came from (command line, environment, the env file, or the default).

Operators debugging a service ask "which value did it use, and why?"; the same loader the
services use answers it, so what this prints is what they run with."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from pydantic import SecretStr

from email_ingestion.admin import common
from email_ingestion.common.redis_client import redact_url
from email_ingestion.common.settings import Settings, settings_fields

REDACTED = "********"


@dataclass(frozen=True)
class Row:
    variable: str
    value: str
    source: str


def rows(settings: Settings, environ: Mapping[str, str] = os.environ,
         command_line: frozenset[str] = frozenset()) -> list[Row]:
    """Every setting with its value in effect and its source."""
    from dotenv import dotenv_values

    in_file = {k.upper(): v for k, v in dotenv_values(settings.env_file).items()} if settings.env_file else {}
    upper_environ = {k.upper(): v for k, v in environ.items()}
    found = []
    for group, field, variable in settings_fields():
        value = getattr(getattr(settings, group), field)
        if variable in command_line:
            source = "command line"
        elif upper_environ.get(variable):
            source = "environment"
        elif in_file.get(variable):
            source = f"env file {settings.env_file}"
        else:
            source = "default"
        found.append(Row(variable, _shown(variable, value), source))
    return found


def _shown(variable: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return REDACTED if value.get_secret_value() else ""
    text = str(value)
    if "://" not in text:
        return text
    # Any URL (REDIS_URL, a webhook handler's, the token endpoint) may carry a secret: in its
    # userinfo, in its query (redis-py takes ?password=, webhooks ?token=), and for
    # webhook:URL in its path too (Slack- and Discord-style hooks are secret paths).
    head, _, rest = text.partition(":")
    if rest.startswith("//"):
        return redact_any_url(text, hide_path=False)
    return f"{head}:{redact_any_url(rest, hide_path=head == 'webhook')}"


def redact_any_url(url: str, *, hide_path: bool) -> str:
    """The URL without userinfo, with every query value (and, `hide_path`, the path) masked."""
    parts = urlsplit(redact_url(url))  # userinfo ends at the LAST "@" (redact_url says why)
    query = "&".join(f"{name}={REDACTED}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    path = f"/{REDACTED}" if hide_path and parts.path.strip("/") else parts.path
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query}" if query else "")


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("email-ingest config", "the settings in effect and where each came from")
    p.add_argument("action", nargs="?", default="show", choices=["show"], help="show (the default)")
    p.add_argument("--json", action="store_true", help="one JSON object: variable -> {value, source}")
    args = p.parse_args(argv)
    settings = common.load(args, "email-ingest config")
    if settings is None:
        return common.EXIT_SETTINGS
    given = {"REDIS_URL": args.redis_url, "REDIS_STREAM_NAME": args.stream, "WORKER_STREAMS": args.stream,
             "WORKER_GROUP": args.group}
    table = rows(settings, command_line=frozenset(k for k, v in given.items() if v is not None))
    if args.json:
        print(json.dumps({r.variable: {"value": r.value, "source": r.source} for r in table}, indent=2))
        return 0
    where = settings.env_file or "none found"
    print(f"env file: {where}")
    width = max(len(r.variable) for r in table)
    for r in table:
        print(f"{r.variable:<{width}}  {r.value or '(unset)':<30}  {r.source}")
    return 0
