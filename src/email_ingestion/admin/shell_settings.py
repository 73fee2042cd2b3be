"""`python -m email_ingestion.admin.shell_settings [--env-file F]`: the settings the shell
scripts need, resolved exactly as the services resolve them (environment, then the `.env`
found the same way), printed as `NAME=value` lines for `eval` in scripts/*.sh.

Without this, scripts/health_check.sh read ports from its own environment only and probed
9090 while the producer, reading PRODUCER_METRICS_PORT from `.env`, listened elsewhere.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from email_ingestion.common.env_files import file_variables, resolve_env_file
from email_ingestion.common.errors import SettingsError
from email_ingestion.common.settings import load_settings

# Read by the scripts only (not Settings): the first worker's port is base + 1.
SCRIPT_DEFAULTS = {"WORKER_BASE_PORT": "9100"}


def script_values(env_file: str) -> dict[str, str]:
    """Script-only variables: the environment first, then the env file, then the default."""
    path = resolve_env_file(env_file)
    from_file: dict[str, str] = {}
    if path is not None and file_variables(path):
        from dotenv import dotenv_values
        from_file = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return {name: os.environ.get(name) or from_file.get(name) or default for name, default in SCRIPT_DEFAULTS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print the settings the shell scripts use, as NAME=value lines.")
    p.add_argument("--env-file", default=".env")
    args = p.parse_args(argv)
    try:
        settings = load_settings(env_file=args.env_file)
        values = {"PRODUCER_METRICS_PORT": str(settings.producer.producer_metrics_port),
                  "WORKER_METRICS_PORT": str(settings.worker.metrics_port), "HEALTH_HOST": settings.health.host,
                  **script_values(args.env_file)}
    except SettingsError as exc:
        print(f"settings: {exc}", file=sys.stderr)
        return 2
    for name, value in values.items():
        print(f"{name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
