"""`email-ingest kit DIR` and `email-ingest units DIR`: the operator kit from the package.

`pip install` gives a server everything an operator runs, not only the Python commands:
config templates (redis.conf, the ACL example, Prometheus config and alert rules, the Grafana
dashboard), `.env.example`, the runbooks and systemd units. `kit` copies them out; `units`
writes the units with ExecStart pointing at this installation's commands (the virtual
environment they run from), so no unit refers to a checkout.

In a wheel the files are package data (`email_ingestion/kit/`, copied there by setup.py);
in a checkout (editable install, `python -m`) they are read where they live.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from email_ingestion.common.cli_args import add_version

PACKAGED = Path(__file__).resolve().parents[1] / "kit"
CHECKOUT = Path(__file__).resolve().parents[3]
# name in the kit -> where it lives in a checkout
PARTS = {"config": "config", "systemd": "deploy/systemd", "runbooks": "docs/runbooks", "env.example": ".env.example",
         "scripts": "scripts"}
# Of scripts/, only the service scripts are operator tools (the rest are benchmarks and demos).
SCRIPTS = ("start.sh", "stop.sh", "health_check.sh", "start.ps1", "stop.ps1", "health_check.ps1")
# What the shipped units say, replaced by this installation's values.
UNIT_VENV = "/opt/email-ingestion/venv"
UNIT_ENV_DIR = "/etc/email-ingestion"


def source(part: str) -> Path:
    """Where one part of the kit is: packaged data, else the checkout."""
    packaged = PACKAGED / part
    if packaged.exists():
        return packaged
    in_checkout = CHECKOUT / PARTS[part]
    if in_checkout.exists():
        return in_checkout
    raise FileNotFoundError(f"the operator kit's {part} is missing from this installation ({packaged})")


def copy_kit(target: Path) -> list[Path]:
    """Copy every part under `target`; refuses to overwrite an existing file."""
    written = []
    for part in PARTS:
        origin, dest = source(part), target / part
        files = sorted(p for p in origin.rglob("*") if p.is_file()) if origin.is_dir() else [origin]
        if part == "scripts":
            files = [p for p in files if p.name in SCRIPTS]
        for path in files:
            out = dest / path.relative_to(origin) if origin.is_dir() else dest
            if out.exists():
                raise FileExistsError(f"{out} exists: not overwritten (choose an empty directory)")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)
            written.append(out)
    return written


def render_unit(text: str, *, venv: Path, env_dir: Path) -> str:
    return text.replace(UNIT_VENV, str(venv)).replace(UNIT_ENV_DIR, str(env_dir))


def write_units(target: Path, *, venv: Path, env_dir: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for unit in sorted(source("systemd").glob("*.service")):
        out = target / unit.name
        out.write_text(render_unit(unit.read_text(), venv=venv, env_dir=env_dir))
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    p = add_version(argparse.ArgumentParser(prog="email-ingest kit",
                                            description="Copy the operator kit, or write systemd units for this install."))
    sub = p.add_subparsers(dest="action", required=True)
    copy = sub.add_parser("copy", help="config templates, alerts, dashboard, runbooks, units, .env.example")
    copy.add_argument("dir", type=Path)
    units = sub.add_parser("units", help="systemd units whose ExecStart runs this installation's commands")
    units.add_argument("dir", type=Path, help="e.g. /etc/systemd/system")
    units.add_argument("--venv", type=Path, default=Path(sys.prefix),
                       help="the environment the commands are installed in (default: this one)")
    units.add_argument("--env-dir", type=Path, default=Path(UNIT_ENV_DIR),
                       help=f"where the units read their env files (default {UNIT_ENV_DIR})")
    args = p.parse_args(argv)
    try:
        if args.action == "copy":
            written = copy_kit(args.dir)
        else:
            written = write_units(args.dir, venv=args.venv.absolute(), env_dir=args.env_dir)
    except (OSError, FileExistsError) as exc:
        print(f"kit: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def units_main(argv: list[str] | None = None) -> int:
    """`email-ingest units DIR ...` is `email-ingest kit units DIR ...`."""
    return main(["units", *(sys.argv[1:] if argv is None else argv)])
