"""Exit statuses shared by the producer and the worker, and the one place that maps the
exceptions a process dies of onto them (systemd restarts on 1, not on 2 or 3)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from email_ingestion.common.errors import AuthError, IngestionError, SettingsError

EXIT_OK, EXIT_FAILED, EXIT_SETTINGS, EXIT_AUTH = 0, 1, 2, 3


def run_guarded(main_loop: Callable[[], None], component: str, log: logging.Logger) -> int:
    """Run the process's loop; turn what ends it into a log line and an exit status."""
    try:
        main_loop()
    except AuthError as exc:
        log.error("authentication failed; not retrying", extra={"error": str(exc)})
        return EXIT_AUTH
    except SettingsError as exc:
        log.error("configuration error; not retrying", extra={"error": str(exc)})
        return EXIT_SETTINGS
    except IngestionError as exc:
        log.error("giving up", extra={"error": f"{type(exc).__name__}: {exc}"})
        return EXIT_FAILED
    except redis.AuthenticationError as exc:
        log.error("Redis refused the credentials: check REDIS_URL / REDIS_PASSWORD; not retrying",
                  extra={"error": f"{type(exc).__name__}: {exc}"})
        return EXIT_AUTH
    except redis.exceptions.NoPermissionError as exc:
        log.error("Redis refused this user a command: check the ACL (config/users.acl.example); not retrying",
                  extra={"error": f"{type(exc).__name__}: {exc}"})
        return EXIT_SETTINGS
    except Exception:  # noqa: BLE001 - last resort: say what broke, exit non-zero for systemd
        log.exception(f"unexpected error; exiting so the supervisor restarts the {component}")
        return EXIT_FAILED
    return EXIT_OK
