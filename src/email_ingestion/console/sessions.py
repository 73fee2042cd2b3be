"""Console sessions, kept server-side in Redis.

The cookie holds only a random token; Redis holds the session under the token's SHA-256
(common/keys.py console_session) with an idle TTL, and the session records when it began so
it also ends at CONSOLE_SESSION_MAX_SECONDS however active. Logging out deletes the key, so a
copied cookie is refused afterwards: signed cookies alone cannot be revoked. Each session has
its own CSRF token (console/csrf.py).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import redis

from email_ingestion.common.keys import console_session, console_user_sessions
from email_ingestion.common.text import to_text
from email_ingestion.console.users import ROLES, Role

TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 128  # longer cookie values are not ours; refused before hashing


@dataclass(frozen=True)
class Session:
    token_digest: str
    user: str
    role: Role
    csrf_token: str
    started_ms: int


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, client: redis.Redis, *, idle_s: int, max_s: int) -> None:
        self.redis = client
        self.idle_s = idle_s
        self.max_s = max_s

    def create(self, user: str, role: Role, now_ms: int) -> tuple[str, Session]:
        """A new session; returns the cookie token (never stored) and the session."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        session = Session(digest(token), user, role, secrets.token_urlsafe(TOKEN_BYTES), now_ms)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(console_session(session.token_digest), mapping={
            "user": user, "role": role, "csrf": session.csrf_token, "started_ms": now_ms})
        pipe.expire(console_session(session.token_digest), self.idle_s)
        pipe.sadd(console_user_sessions(user), session.token_digest)
        pipe.expire(console_user_sessions(user), self.max_s)
        pipe.execute()
        return token, session

    def find(self, token: str | None, now_ms: int, *, renew: bool = True) -> Session | None:
        """The live session of a cookie token, its idle time renewed (unless not `renew`: a
        page refreshing itself is not a person using it); None when unknown or expired."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        key = console_session(digest(token))
        fields = {to_text(k): to_text(v) for k, v in self.redis.hgetall(key).items()}
        if not fields or fields.get("role") not in ROLES:
            return None
        started_ms = int(fields.get("started_ms") or 0)
        if now_ms - started_ms >= self.max_s * 1000:
            self.redis.delete(key)
            return None
        if renew:
            self.redis.expire(key, self.idle_s)
        role: Role = "admin" if fields["role"] == "admin" else "viewer"
        return Session(digest(token), fields["user"], role, fields["csrf"], started_ms)

    def end(self, session: Session) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(console_session(session.token_digest))
        pipe.srem(console_user_sessions(session.user), session.token_digest)
        pipe.execute()

    def end_all(self, user: str) -> int:
        """End every session of `user` (removed, password or role changed)."""
        members = [to_text(m) for m in self.redis.smembers(console_user_sessions(user))]
        keys = [console_session(m) for m in members] + [console_user_sessions(user)]
        return int(self.redis.delete(*keys)) - 1 if members else 0
