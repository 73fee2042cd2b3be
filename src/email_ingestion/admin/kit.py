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
import re
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
    """Copy every part under `target`; refuses to overwrite an existing file, and then copies
    nothing (no half-copied kit mixing old and new files)."""
    plan = [(path, out) for part in PARTS for path, out in _files(part, target / part)]
    existing = [out for _, out in plan if out.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} exists ({len(existing)} of the kit's files do): not overwritten, nothing copied "
                              "(choose an empty directory)")
    for path, out in plan:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)
    return [out for _, out in plan]


def _files(part: str, dest: Path) -> list[tuple[Path, Path]]:
    origin = source(part)
    if not origin.is_dir():
        return [(origin, dest)]
    files = sorted(p for p in origin.rglob("*") if p.is_file())
    if part == "scripts":
        files = [p for p in files if p.name in SCRIPTS]
    return [(path, dest / path.relative_to(origin)) for path in files]


def render_unit(text: str, *, venv: Path, env_dir: Path) -> str:
    """The shipped unit with this installation's paths, in systemd's syntax: "%" doubled (a
    specifier otherwise), and the command quoted when the path holds a space or a quote
    (ExecStart splits words at spaces; EnvironmentFile= takes the rest of the line)."""
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("ExecStart=" + UNIT_VENV):
            command, _, rest = line[len("ExecStart="):].partition(" ")
            line = f"ExecStart={_quoted(command.replace(UNIT_VENV, _escaped(venv)))}" + (f" {rest}" if rest else "")
        lines.append(line.replace(UNIT_VENV, _escaped(venv)).replace(UNIT_ENV_DIR, _escaped(env_dir)))
    return "".join(lines)


def _escaped(path: Path) -> str:
    return str(path).replace("%", "%%")


def _quoted(word: str) -> str:
    """A command word with spaces in double quotes (check_unit_paths refused quotes and backslashes)."""
    bare = word.rstrip("\n")
    return f'"{bare}"' + word[len(bare):] if " " in bare else word


def check_unit_paths(venv: Path, env_dir: Path) -> list[str]:
    """Why the units would not start: systemd wants absolute paths, and the units' ProtectHome=
    hides /home, /root and /run/user from the service."""
    if not env_dir.is_absolute():
        raise ValueError(f"--env-dir {env_dir}: systemd needs an absolute path")
    for path in (venv, env_dir):
        if re.search(r"[\"'\\\x00-\x1f\x7f]", str(path)):  # systemd refuses these in a command's name
            raise ValueError(f"{path}: systemd refuses a path holding a quote, a backslash or a control character")
    hidden = [p for p in (venv, env_dir) if p.parts[1:2] in (("home",), ("root",)) or p.parts[1:3] == ("run", "user")]
    return [f"warning: {p} is under a home directory: the units' ProtectHome=yes hides it from the service "
            "(install under /opt, or drop ProtectHome in a drop-in)" for p in hidden]


def write_units(target: Path, *, venv: Path, env_dir: Path) -> list[Path]:
    for warning in check_unit_paths(venv, env_dir):
        print(f"units: {warning}", file=sys.stderr)
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
    except (OSError, ValueError) as exc:
        print(f"kit: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def units_main(argv: list[str] | None = None) -> int:
    """`email-ingest units DIR ...` is `email-ingest kit units DIR ...`."""
    return main(["units", *(sys.argv[1:] if argv is None else argv)])
