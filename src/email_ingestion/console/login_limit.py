"""Failed-login limit: per user name and per client address, counted in Redis.

A fixed window per subject (INCR, and EXPIRE on the first failure): after
CONSOLE_LOGIN_MAX_FAILURES failures within CONSOLE_LOGIN_WINDOW_SECONDS the subject is
refused until the window ends, right password or not, so guessing costs a window per few
tries. Counting both the name and the address stops one address trying many names and many
addresses trying one name. Kept in Redis so several console processes share the count.
"""

from __future__ import annotations

import redis

from email_ingestion.common.keys import console_login_failures


class LoginLimit:
    def __init__(self, client: redis.Redis, *, max_failures: int, window_s: int) -> None:
        self.redis = client
        self.max_failures = max_failures
        self.window_s = window_s

    def _keys(self, user: str, address: str) -> list[str]:
        return [console_login_failures("user", user.lower()[:64]), console_login_failures("addr", address)]

    def blocked(self, user: str, address: str) -> bool:
        counts = self.redis.mget(self._keys(user, address))
        return any(int(c) >= self.max_failures for c in counts if c is not None)

    def failed(self, user: str, address: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for key in self._keys(user, address):
            # The window starts at the first failure: SET NX gives it its TTL once, INCR keeps it.
            pipe.set(key, 0, ex=self.window_s, nx=True)
            pipe.incr(key)
        pipe.execute()

    def succeeded(self, user: str) -> None:
        """A right password clears the name's count (not the address's: one address holding
        one valid login must not unlock guessing at the others)."""
        self.redis.delete(console_login_failures("user", user.lower()[:64]))
