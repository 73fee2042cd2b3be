"""A throwaway Dovecot IMAP server on loopback, for tests, the demo and benchmarks.

It runs from `dovecot-imapd` with its own config in a temporary folder: passwd-file users
for LOGIN, and an `oauth2` passdb that validates HS256 JWTs locally from a key folder,
so XOAUTH2 is exercised for real (tests mint the tokens with `mint_jwt`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

JWT_KEY = b"test-signing-key-not-a-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_jwt(email: str, lifetime_s: int = 3600, key: bytes = JWT_KEY) -> str:
    """An HS256 JWT that the fixture's oauth2 passdb accepts for `email`."""
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": email, "email": email, "iat": now - 5, "nbf": now - 5, "exp": now + lifetime_s}
    body = _b64url(json.dumps(claims).encode())
    signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64url(signature)}"


def _mail_owner() -> tuple[int, int, str, str]:
    """Dovecot refuses to give mail processes uid 0, so as root the mail belongs to `nobody`."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid, "dovecot", "dovenull"
    me = pwd.getpwuid(os.geteuid())
    return me.pw_uid, me.pw_gid, me.pw_name, me.pw_name


@dataclass
class DovecotServer:
    root: Path
    users: dict[str, str] = field(default_factory=lambda: {"alice@example.com": "alice-pw"})
    port: int = 0
    ssl_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root = _home_for(Path(self.root))
        weakref.finalize(self, shutil.rmtree, self.root, True)  # at exit (the server stopped by then) or when dropped
        self.port = self.port or free_port()
        self.ssl_port = self.ssl_port or free_port()

    @property
    def cert_file(self) -> Path:
        return self.root / "cert.pem"

    def mail_dir(self, user: str) -> Path:
        return self.root / "mail" / user

    def start(self) -> DovecotServer:
        if not shutil.which("dovecot"):
            raise RuntimeError("dovecot is not installed (apt-get install dovecot-imapd)")
        self._write_config()
        self.process = subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.root / "dovecot.conf")],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "stderr.log", "ab"),
            start_new_session=True,
        )
        try:
            wait_for_port(self.port)
            wait_for_port(self.ssl_port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"dovecot did not start: {self.log_tail()}") from None
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None
        # dovecot's master exits before its children have closed their sockets.
        _wait_port_free(self.port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("dovecot.log", "stderr.log"):
            path = self.root / name
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _write_config(self) -> None:
        uid, gid, internal_user, login_user = _mail_owner()
        for sub in ("run", "state", "mail", "keys/default/HS256"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chown(self.root / "mail", uid, gid)
        self._write_cert()
        (self.root / "keys/default/HS256/default").write_text(base64.b64encode(JWT_KEY).decode())
        users = "".join(f"{name}:{{PLAIN}}{pw}::::::\n" for name, pw in self.users.items())
        (self.root / "users").write_text(users, encoding="utf-8")
        (self.root / "oauth2.conf").write_text(
            "introspection_mode = local\n"
            f"local_validation_key_dict = fs:posix:prefix={self.root}/keys/\n"
            "username_attribute = email\n"
        )
        (self.root / "dovecot.conf").write_text(_CONFIG.format(
            root=self.root, port=self.port, ssl_port=self.ssl_port, uid=uid, gid=gid,
            internal_user=internal_user, login_user=login_user,
        ))
        for path in self.root.rglob("*"):
            if path.is_relative_to(self.root / "mail"):
                continue
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.root.chmod(0o755)
        _make_traversable(self.root)

    def _write_cert(self) -> None:
        if self.cert_file.exists():
            return
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(self.root / "key.pem"), "-out", str(self.cert_file),
             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )

    def seed_maildir(self, user: str, messages: list[bytes], folder: str = "") -> None:
        """Write messages straight into the user's Maildir (fast, for big benchmarks)."""
        uid, gid, _, _ = _mail_owner()
        base = self.mail_dir(user) / (f".{folder}" if folder else "")
        for sub in ("cur", "new", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        stamp = int(time.time())
        for index, raw in enumerate(messages):
            (base / "cur" / f"{stamp}.{index}_{uuid.uuid4().hex}.bench:2,").write_bytes(raw)
        for path in [self.mail_dir(user), *self.mail_dir(user).rglob("*")]:
            os.chown(path, uid, gid)


    def seed_maildir_with_uids(self, user: str, messages: Iterable[bytes], folder: str, *, first_uid: int = 1,
                               uidvalidity: int = 1_700_000_000) -> int:
        """A new folder written straight to disk with its `dovecot-uidlist`, so Dovecot takes
        the UIDs from the file instead of assigning them: 200,000 messages in seconds, UIDs
        from `first_uid` (e.g. in the billions, as after a migration). Returns the count."""
        uid, gid, _, _ = _mail_owner()
        base = self.mail_dir(user) / f".{folder}"
        for sub in ("cur", "new", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        stamp = int(time.time())
        lines = []
        for index, raw in enumerate(messages):
            name = f"{stamp}.M{index}P1.seed,S={len(raw)}"
            (base / "cur" / f"{name}:2,").write_bytes(raw)
            lines.append(f"{first_uid + index} :{name}\n")
        header = f"3 V{uidvalidity} N{first_uid + len(lines)} G{uuid.uuid4().hex}\n"
        (base / "dovecot-uidlist").write_text(header + "".join(lines))
        (base / "maildirfolder").touch()
        for path in [self.mail_dir(user), *self.mail_dir(user).iterdir(), base, *base.iterdir()]:
            os.chown(path, uid, gid)
        _chown_tree(base / "cur", uid, gid)
        return len(lines)


def _chown_tree(folder: Path, uid: int, gid: int) -> None:
    if os.geteuid() == uid:
        return  # files already belong to the mail user
    with os.scandir(folder) as entries:
        for entry in entries:
            os.chown(entry.path, uid, gid)


def _home_for(link: Path) -> Path:
    """The folder Dovecot runs from. Its unprivileged processes (auth as `dovecot`, mail as
    `nobody`) must search every folder above it, and a per-user temporary folder does not stay
    searchable: pytest makes /tmp/pytest-of-<user> private (0700) again at every session start,
    which cut a Dovecot of a suite running beside it off its own files ("Temporary
    authentication failure"). So the server lives in a folder of its own directly in the system
    temporary folder, and `link` (the folder the caller chose) points to it."""
    home = Path(tempfile.mkdtemp(prefix="email-ingestion-dovecot-"))
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()  # an earlier server's
    elif link.is_dir() and not any(link.iterdir()):
        link.rmdir()  # made empty by the caller (tmp_path_factory.mktemp)
    if not link.exists():
        link.symlink_to(home, target_is_directory=True)
    return home


def _make_traversable(path: Path) -> None:
    """Dovecot's unprivileged auth process must reach the config folder: give every
    ancestor the search (x) bit for others (temporary folders are often 0700)."""
    for parent in path.resolve().parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001 and parent.stat().st_uid == os.geteuid():
            parent.chmod(mode | 0o001)


def _wait_port_free(port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                time.sleep(0.05)
        except OSError:
            return


_CONFIG = """
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
default_internal_user = {internal_user}
default_login_user = {login_user}
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u
mail_max_userip_connections = 200
imap_idle_notify_interval = 2 mins
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/oauth2.conf
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {ssl_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
"""
