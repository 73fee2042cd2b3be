"""Every project command quoted in the README and docs exists, and every flag it uses is one
the command accepts (each is run with --help; make targets with make -n)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMMAND = re.compile(r"(python (?:-m [\w.]+|[\w/]+\.py)[^`\n|]*|scripts/\w+\.sh[^`\n|]*|(?:(?<=`)|^)make \w[\w-]*"
                     r"|(?:(?<=`)|^)email-ingest \w[^`\n|]*)", re.MULTILINE)
NESTED = {"prune", "list", "show", "reset", "users"}  # email-ingest consumers prune, mailbox reset, console users...
SUBCOMMANDS = {"email_ingestion.worker.dlq_admin": {"list", "show", "replay", "purge", "stats"}}
NO_HELP = {"email_ingestion.common.payload", "email_ingestion.common.settings", "json.tool"}


def quoted_commands() -> list[tuple[str, str]]:
    found = set()
    for doc in DOCS:
        for match in COMMAND.finditer(doc.read_text()):
            command = match.group(1).split("#")[0].split(" && ")[0].split(" | ")[0].strip().rstrip(".,;:)")
            found.add((doc.relative_to(ROOT).as_posix(), command))
    return sorted(found)


@cache
def help_text(program: tuple[str, ...]) -> tuple[int, str]:
    done = subprocess.run([*program, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def program_of(words: list[str]) -> tuple[str, ...]:
    if words[0] == "email-ingest":
        subs = words[1:2] + [w for w in words[2:3] if w in NESTED]
        return (sys.executable, "-m", "email_ingestion", *subs)
    if words[0] == "python":
        words = [sys.executable, *words[1:]]
        if words[1] == "-m":
            module = words[2]
            sub = next((w for w in words[3:] if w in SUBCOMMANDS.get(module, ())), None)
            return (sys.executable, "-m", module, *([sub] if sub else []))
        return tuple(words[:2])
    return ("bash", str(ROOT / words[0]))


def test_docs_quote_commands():
    """The extraction finds over 30 quoted commands, so the per-command check proves something."""
    assert len(quoted_commands()) > 30, "the extraction found too little to prove anything"


@pytest.mark.parametrize(("doc", "command"), quoted_commands())
def test_quoted_command_exists_and_accepts_its_flags(doc, command):
    """Each quoted command runs with --help (make targets with make -n) and lists every flag used."""
    words = shlex.split(command)
    if words[0] == "make":
        done = subprocess.run(["make", "-n", words[1]], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{doc}: {command}: {done.stderr}"
        return
    if len(words) > 2 and words[1] == "-m" and words[2] in NO_HELP:
        return
    program = program_of(words)
    code, text = help_text(program)
    assert code == 0, f"{doc}: `{command}` --help failed: {text[-500:]}"
    for parent in range(3, len(program)):  # a subcommand: its parents' options count too
        text += help_text(program[:parent])[1]
    for flag in (w.split("=")[0] for w in words if w.startswith("--")):
        assert flag in text, f"{doc}: `{command}` uses {flag}, which --help does not list"
