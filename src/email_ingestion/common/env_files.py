"""Which `.env` file a process reads, and which variables in it (or in the environment) are
misspelt settings.

Search order when no file is named: `EMAIL_INGEST_ENV_FILE`, `.env` in the current
directory, then `.env` next to the installation (the checkout an editable install points
at, or the directory holding the virtual environment), so a service started from any
directory reads the same file as one started from the checkout. A file named explicitly
(`--env-file`, `EMAIL_INGEST_ENV_FILE`) must exist: a typo there is a setting error, not a
silent fall back to defaults.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from email_ingestion.common.errors import SettingsError

DEFAULT_ENV_FILE = ".env"
ENV_FILE_VARIABLE = "EMAIL_INGEST_ENV_FILE"
# Prefixes that mark a variable as meant for this project; an unknown one is a typo.
PROJECT_PREFIXES = ("IMAP_", "REDIS_", "GOOGLE_", "WORKER_", "LOG_", "HEALTH_", "RETRY_", "PRODUCER_",
                    "WEBHOOK_", "DLQ_", "CLAIM_", "LEASE_", "HEARTBEAT_", "IDEMPOTENCY_", "EMAIL_INGEST_",
                    "GMAIL_", "CONSOLE_", "MAILBOX", "INITIAL_SYNC", "HANDLER_", "MAX_RETR", "MAX_DELIVER")
# Outside the prefixes, a name this close to a known one is a typo (POLL_INTERVALL_SECONDS,
# INITAL_SYNC, MAX_RETRYS); the environment holds many unrelated names, so the bar is high.
NEAR_MISS_CUTOFF = 0.8
# Names other software puts into every process's environment, never meant for us: Kubernetes
# service links (a Service "redis" gives REDIS_SERVICE_HOST, REDIS_PORT_6379_TCP_ADDR, ...),
# Docker links, and the build variables of official images (REDIS_VERSION, *_DOWNLOAD_URL).
# Only in the environment: a name in our own settings file is meant for us.
FOREIGN_NAME = re.compile(r".+_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?|VERSION"
                          r"|DOWNLOAD_(URL|SHA|SHA1|SHA256|SHA512))")
# Read by the shell scripts, not by Settings.
SCRIPT_VARIABLES = frozenset({ENV_FILE_VARIABLE, "WORKER_BASE_PORT", "LOG_DIR"})


def install_dirs() -> list[Path]:
    """Directories an installation lives in: the checkout (src layout) and the venv's parent."""
    package = Path(__file__).resolve().parents[1]
    candidates = [package.parents[1]]
    if sys.prefix != sys.base_prefix:  # in a virtual environment: the directory holding it
        candidates.append(Path(sys.prefix).resolve().parent)
    return [d for i, d in enumerate(candidates) if d not in candidates[:i]]


def resolve_env_file(given: str | Path | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The file to read: None reads none; the default name searches; any other name must exist."""
    if given is None:
        return None
    if str(given) != DEFAULT_ENV_FILE:
        return _must_exist(Path(given), "--env-file")
    if environ.get(ENV_FILE_VARIABLE):
        return _must_exist(Path(environ[ENV_FILE_VARIABLE]), ENV_FILE_VARIABLE)
    for directory in (Path.cwd(), *install_dirs()):
        if (directory / DEFAULT_ENV_FILE).is_file():
            return directory / DEFAULT_ENV_FILE
    return None


def _must_exist(path: Path, where: str) -> Path:
    if not path.exists() or path.is_dir():  # /dev/null is fine: "no settings file"
        raise SettingsError(f"invalid setting {where}: {path} is not a readable file")
    return path


def check_env_file(path: Path | None) -> None:
    """A file that is not UTF-8 or has a line dotenv cannot parse is a settings error: dotenv
    would warn and drop it (and every line after an unterminated quote), falling back to
    defaults the operator never chose."""
    if path is None:
        return
    import io

    from dotenv.parser import parse_stream
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"env file {path} cannot be read as UTF-8 text: {type(exc).__name__}") from None
    bad = next((b.original.line for b in parse_stream(io.StringIO(text)) if b.error), None)
    if bad is not None:
        raise SettingsError(f"env file {path}: line {bad} cannot be parsed (an unterminated quote?)")


def file_variables(path: Path | None) -> list[str]:
    if path is None:
        return []
    from dotenv import dotenv_values
    return [name for name in dotenv_values(path) if name]


def unknown_variables(names: Iterable[str], known: Iterable[str], where: str = "the environment",
                      every_name: bool = False) -> list[str]:
    """One warning per name that no setting reads and that looks meant for us: a project
    prefix, a near-miss of a known name, or (`every_name`, for a settings file, where every
    line is meant for us) any name at all; with the nearest known name."""
    known_set = set(known) | SCRIPT_VARIABLES
    candidates = sorted(known_set - SCRIPT_VARIABLES)
    warnings = []
    for name in sorted(set(names)):
        upper = name.upper()
        if upper in known_set or (not every_name and FOREIGN_NAME.fullmatch(upper)):
            continue
        near = difflib.get_close_matches(upper, candidates, n=1, cutoff=NEAR_MISS_CUTOFF)
        if not (every_name or upper.startswith(PROJECT_PREFIXES) or near):
            continue
        nearest = near or difflib.get_close_matches(upper, candidates, n=1, cutoff=0.5)
        hint = f" (did you mean {nearest[0]}?)" if nearest else ""
        warnings.append(f"unknown setting {name} in {where} is ignored{hint}")
    return warnings
