"""Console users: a JSON file of names, roles and salted scrypt password hashes.

Written only by `email-ingest console users ...`; the console reads it (again whenever it
changes), so removing a user or changing a role takes effect on that user's next request.
The hash is the standard library's scrypt (RFC 7914) with a per-user random salt and the
parameters stored beside it, so they can be raised later without breaking older entries;
no extra dependency for something hashlib does well.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["viewer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "admin")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_PASSWORD_CHARS = 12
# scrypt cost: n=2**15, r=8 is the OWASP password-storage figure (~32 MiB, tens of ms).
_N, _R, _P, _DKLEN = 2**15, 8, 1, 32
_MAXMEM = 64 * 1024 * 1024


class UsersFileError(Exception):
    """The users file is missing, unreadable or malformed, or a requested change is invalid."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str


def hash_password(password: str, *, n: int = _N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=_R, p=_P, dklen=_DKLEN, maxmem=_MAXMEM)
    return f"scrypt${n}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected), maxmem=_MAXMEM)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def check_login(users: dict[str, User], name: str, password: str) -> User | None:
    user = users.get(name)
    # A name that does not exist is checked against a throwaway hash of the same cost as the
    # file's, so the answer's timing does not tell which names exist.
    stored = user.password_hash if user else _dummy_hash(_cost(next(iter(users.values())).password_hash) if users else _N)
    ok = verify_password(password, stored)
    return user if ok and user else None


def _cost(stored: str) -> int:
    parts = stored.split("$")
    return int(parts[1]) if len(parts) == 6 and parts[1].isdigit() else _N


@functools.cache
def _dummy_hash(n: int) -> str:
    return hash_password(secrets.token_urlsafe(16), n=n)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_mode(path: Path) -> None:
    """Refuse a users file others may write (they could add themselves as admin), as ssh
    refuses a group- or world-writable authorized_keys."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # load_users says what is wrong
    if mode & 0o022:
        raise UsersFileError(f"users file {path} is writable by group or others (mode {mode & 0o777:o}): "
                             f"chmod 600 {path}")


def load_users(path: Path) -> dict[str, User]:
    check_mode(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsersFileError(f"no users file at {path}: create one with `email-ingest console users add NAME "
                             f"--role admin`") from None
    except (OSError, ValueError) as exc:
        raise UsersFileError(f"users file {path} is unreadable: {exc}") from None
    try:
        return {name: User(name, _role(entry["role"]), str(entry["password_hash"]))
                for name, entry in raw["users"].items()}
    except (KeyError, TypeError, AttributeError, UsersFileError) as exc:
        raise UsersFileError(f"users file {path} is malformed ({type(exc).__name__}: {exc})") from None


def _role(value: object) -> Role:
    for role in ROLES:
        if value == role:
            return role
    raise UsersFileError(f"role must be one of {', '.join(ROLES)}, not {value!r}")


def save_users(path: Path, users: dict[str, User]) -> None:
    """Replace the file atomically, readable by its owner only (it holds password hashes)."""
    body = {"users": {u.name: {"role": u.role, "password_hash": u.password_hash} for u in users.values()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(body, out, indent=2, sort_keys=True)
            out.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UsersFileError("a user name is 1-64 letters, digits or _ . @ -")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UsersFileError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    return password


class UserDirectory:
    """The users file as the console sees it: re-read whenever its inode metadata changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, ...] | None = None
        self._users: dict[str, User] = {}

    def users(self) -> dict[str, User]:
        try:
            stat = self.path.stat()
        except OSError:
            return {}  # the file was removed: nobody can log in or stay logged in
        # ctime and mode too: a chmod that makes the file writable by others must be seen.
        stamp = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino, stat.st_mode)
        if stamp != self._stamp:
            try:
                self._users = load_users(self.path)
            except UsersFileError:
                self._users = {}
            self._stamp = stamp
        return self._users

    def get(self, name: str) -> User | None:
        return self.users().get(name)
