"""The README stays short and true: its links resolve, and its layout matches the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def layout_rooms() -> dict[str, str]:
    """Room path -> its description, from the README's Layout block."""
    block = README.read_text().split("## Layout", 1)[1].split("```", 2)[1]
    rooms: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            current, _, text = line.partition(" ")
            rooms[current] = text
        elif current is not None:
            rooms[current] += " " + line.strip()
    return rooms


def test_readme_is_short():
    """A newcomer reads it in one sitting; the reference lives in docs/."""
    assert len(README.read_text().splitlines()) <= 300


def test_every_relative_link_resolves():
    """Each relative link in the README and docs names a file or folder that exists."""
    broken = []
    for page in DOCS:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_layout_names_every_room_and_only_files_that_exist():
    """Every package folder and top-level folder is a room of the layout; every file a room names exists in it."""
    rooms = layout_rooms()
    package = ROOT / "src" / "email_ingestion"
    for folder in sorted(p for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        assert f"src/email_ingestion/{folder.name}/" in rooms, f"{folder.name} missing from the README layout"
    for folder in ("config/", "deploy/systemd/", "scripts/", "tests/", "docs/"):
        assert folder in rooms, folder
    for room, text in rooms.items():
        names = re.findall(r"(?<![*\w])([\w@.-]+\.(?:py|sh|md|json|yml|conf))\b", text)
        for room_path in room.split(","):
            room_path = room_path.strip()
            if room_path.endswith("/"):
                assert (ROOT / room_path).is_dir(), room_path
        base = ROOT / room.split(",")[0].strip()
        if not base.is_dir():
            continue
        for name in names:
            assert list(base.rglob(name)) or (ROOT / name).exists(), f"{room}: {name} does not exist"
