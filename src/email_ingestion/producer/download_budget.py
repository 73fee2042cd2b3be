"""GMAIL_DAILY_DOWNLOAD_MB: a rolling 24-hour budget of body downloads per Gmail account.

Gmail allows an account about 2,500 MB of IMAP downloads a day; going over locks IMAP for
up to a day. Every folder of the account spends from one budget in Redis (per account and
stream, so producers on several hosts share it): one slot per minute holds the bytes
downloaded then, and the budget is what the last 1,440 slots leave. A batch that does not
fit waits, without holding anything, until enough old slots leave the window; the wait is
visible in /status (`gmail_download_budget`), the `email_ingestion_gmail_download_waiting`
metric and the `EmailGmailDownloadBudgetSpent` alert. The first batch of an empty window
always goes, so a message larger than the whole budget is not stuck forever.

The clock is Redis's (TIME), the same for every producer host.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from email_ingestion.common.errors import WaitInterrupted
from email_ingestion.common.keys import gmail_downloads
from email_ingestion.common.redis_client import redis_errors

log = logging.getLogger(__name__)

WINDOW_MS = 86_400_000
SLOTS = 1440
MAX_SLEEP_S = 60.0
WAITING_FIELD = "waiting_until_ms"

# KEYS: the budget hash. ARGV: bytes, limit, window_ms, slots. Answers {1, used after} when
# spent, {0, used, ms until enough leaves the window} when it must wait (nothing spent).
_SPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want, limit, window, slots = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local slot_ms = window / slots
local current = math.floor(now / slot_ms)
local used, by_slot = 0, {}
local stored = redis.call('HGETALL', KEYS[1])
for i = 1, #stored, 2 do
  local slot = tonumber(stored[i])
  if slot then
    if slot <= current - slots then
      redis.call('HDEL', KEYS[1], stored[i])
    else
      used = used + tonumber(stored[i + 1])
      by_slot[#by_slot + 1] = {slot, tonumber(stored[i + 1])}
    end
  end
end
if used == 0 or used + want <= limit then
  redis.call('HINCRBY', KEYS[1], tostring(current), want)
  redis.call('HDEL', KEYS[1], 'waiting_until_ms')
  redis.call('PEXPIRE', KEYS[1], window * 2)
  return {1, used + want, 0}
end
table.sort(by_slot, function(a, b) return a[1] < b[1] end)
local freed, until_ms = 0, now
for _, pair in ipairs(by_slot) do
  freed = freed + pair[2]
  until_ms = (pair[1] + slots + 1) * slot_ms
  if used - freed + want <= limit then break end
end
redis.call('HSET', KEYS[1], 'waiting_until_ms', until_ms)
return {0, used, until_ms - now}
"""


class Pulse:
    """A wait that calls `should_stop` (the runner's liveness tick) at least every second:
    a budget wait can last hours, and /health must not take it for a stalled loop."""

    def __init__(self, stop_event: threading.Event) -> None:
        self.stop_event = stop_event
        self.should_stop: Callable[[], bool] = stop_event.is_set

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.should_stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.stop_event.wait(min(1.0, left)):
                return True
        return True


@dataclass
class BudgetState:
    limit_bytes: int
    used_bytes: int = 0
    waiting: bool = False
    resumes_in_s: float = 0.0

    def snapshot(self) -> dict[str, object]:
        return {"limit_bytes": self.limit_bytes, "used_bytes_24h": self.used_bytes, "waiting": self.waiting,
                "resumes_in_s": round(self.resumes_in_s, 1) if self.waiting else None}


class DownloadBudget:
    def __init__(self, *, client: redis.Redis, stream: str, account: str, limit_bytes: int,
                 wait: Callable[[float], bool], on_change: Callable[[BudgetState], None] = lambda _s: None) -> None:
        self.redis = client
        self.key = gmail_downloads(stream, account)
        self.state = BudgetState(limit_bytes)
        self._wait = wait  # sleeps; True early when the producer is stopping
        self._on_change = on_change
        self._spend = client.register_script(_SPEND)

    def spend(self, size_bytes: int) -> bool:
        """Take `size_bytes` from the budget, waiting while it is spent (WaitInterrupted on stop);
        True when it had to wait."""
        if size_bytes <= 0:
            return False
        waited = False
        while not self._try(size_bytes):
            waited = True
            if self._wait(min(MAX_SLEEP_S, max(0.05, self.state.resumes_in_s))):
                raise WaitInterrupted("stopped while waiting for the Gmail download budget")
        if self.state.waiting:
            log.info("Gmail download budget: bodies resume")
            self.state.waiting = False
            self._on_change(self.state)
        return waited

    def _try(self, size_bytes: int) -> bool:
        window_ms = WINDOW_MS
        with redis_errors("Gmail download budget"):
            ok, used, wait_ms = self._spend(keys=[self.key], args=[size_bytes, self.state.limit_bytes, window_ms, SLOTS])
        self.state.used_bytes = int(used)
        if int(ok):
            self._on_change(self.state)
            return True
        if not self.state.waiting:
            log.warning("Gmail download budget spent: bodies wait for the rolling 24-hour window to move",
                        extra={"limit_bytes": self.state.limit_bytes, "used_bytes": int(used),
                               "resumes_in_s": round(int(wait_ms) / 1000, 1)})
        self.state.waiting = True
        self.state.resumes_in_s = int(wait_ms) / 1000
        self._on_change(self.state)
        return False
