"""One sync pass over one mailbox: decide where to start, fetch new mail in batches, emit.

Where a pass starts:
- no stored state: INITIAL_SYNC decides (all / new / since:DATE);
- same UIDVALIDITY: after the stored last UID;
- UIDVALIDITY changed: every message is looked at again, but only its fingerprint is
  fetched first; messages already emitted (or older than the first sync's baseline) are
  skipped, so a re-created mailbox does not re-deliver itself.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from email_ingestion.common.logging import correlation
from email_ingestion.common.settings import ProducerSettings
from email_ingestion.imap.session import ImapSession, MailboxStatus
from email_ingestion.monitoring.metrics import ProducerMetrics
from email_ingestion.producer.build_site import Builder, Built
from email_ingestion.producer.fetch import MessageFetcher
from email_ingestion.producer.progress import Progress
from email_ingestion.producer.state import MailboxState, StateStore, StreamGuard

log = logging.getLogger(__name__)

ShouldStop = Callable[[], bool]


@dataclass
class PassResult:
    seen: int = 0
    emitted: int = 0
    uidvalidity_changed: bool = False
    interrupted: bool = False


class MailboxSync:
    def __init__(self, *, session: ImapSession, store: StateStore, guard: StreamGuard,
                 fetcher: MessageFetcher, settings: ProducerSettings, metrics: ProducerMetrics,
                 wait: Callable[[float], bool], make_builder: Callable[[int], Builder]) -> None:
        self.session = session
        self.store = store
        self.guard = guard
        self.fetcher = fetcher
        self.settings = settings
        self.metrics = metrics
        self._wait = wait  # sleeps, returning True early when asked to stop
        self._make_builder = make_builder
        self.backpressured = False

    def run_pass(self, should_stop: ShouldStop) -> PassResult:
        with correlation() as pass_id:
            started = time.monotonic()
            status = self.session.examine()
            stored = self.store.load()
            result = PassResult()
            if stored is not None and stored.uidvalidity != status.uidvalidity:
                self._resync(status, stored, pass_id, should_stop, result)
            else:
                start = stored.last_uid + 1 if stored else self._first_start(status)
                uids = self.session.uids_from(start)
                self._emit_uids(uids, status.uidvalidity, pass_id, should_stop, result)
            self.metrics.polls.inc()
            self.metrics.poll_duration.observe(time.monotonic() - started)
            self.guard.trim_acknowledged()
            if result.seen:
                log.info("sync pass done", extra={"new": result.seen, "emitted": result.emitted,
                                                  "duration_s": round(time.monotonic() - started, 3)})
            return result

    def _first_start(self, status: MailboxStatus) -> int:
        """Where the very first pass starts; records the baseline for later resyncs."""
        mode = self.settings.initial_sync
        if mode == "all":
            return 1
        if mode == "new":
            last = (status.uidnext - 1) if status.uidnext else max(self.session.uids_from(1) or [0])
            self.store.emit(status.uidvalidity, last, [], since_ms=_now_ms())
            log.info("first run with INITIAL_SYNC=new: existing mail skipped", extra={"baseline_uid": last})
            return last + 1
        since = self.settings.since_date
        assert since is not None
        uids = self.session.uids_since(since)
        first = uids[0] if uids else (status.uidnext or 1)
        since_ms = int(dt.datetime.combine(since, dt.time(), dt.UTC).timestamp() * 1000)
        self.store.emit(status.uidvalidity, first - 1, [], since_ms=since_ms)
        return first

    def _resync(self, status: MailboxStatus, stored: MailboxState, pass_id: str,
                should_stop: ShouldStop, result: PassResult) -> None:
        log.warning("UIDVALIDITY changed: re-checking the mailbox, already emitted messages are skipped",
                    extra={"old_uidvalidity": stored.uidvalidity, "new_uidvalidity": status.uidvalidity})
        self.metrics.uidvalidity_changes.inc()
        result.uidvalidity_changed = True
        uids = self.session.uids_from(1)
        if not uids:
            self.store.emit(status.uidvalidity, 0, [], since_ms=stored.since_ms)
            return
        self._emit_uids(uids, status.uidvalidity, pass_id, should_stop, result, resync_since_ms=stored.since_ms)

    def _emit_uids(self, uids: Sequence[int], uidvalidity: int, pass_id: str, should_stop: ShouldStop,
                   result: PassResult, resync_since_ms: int | None = None) -> None:
        """Emit `uids` in batches. With `resync_since_ms` (after a UIDVALIDITY change) only
        messages never emitted and not older than the first run's baseline go out."""
        if not uids:
            return
        large = set(self.session.uids_from(uids[0], "LARGER", str(self.settings.large_message_bytes)))
        progress = Progress(len(uids), self.settings.progress_interval_seconds)
        size = self.settings.batch_size
        batches = [list(uids[offset:offset + size]) for offset in range(0, len(uids), size)]

        builder = self._make_builder(len(batches))

        def download(batch: list[int]) -> Built:
            todo = batch if resync_since_ms is None else self._not_yet_emitted(batch, resync_since_ms)
            return builder.submit(self.fetcher.download(todo, large), uidvalidity, pass_id)

        # Read ahead: the next batch downloads (network-bound) while this one is built and
        # written. Only that thread touches the IMAP connection until the pass ends.
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imap-read-ahead") as pool:
                ahead = pool.submit(contextvars.copy_context().run, download, batches[0])
                for index, batch in enumerate(batches):
                    if should_stop() or not self._wait_for_room(should_stop):
                        result.interrupted = True
                        return
                    built = ahead.result()
                    if index + 1 < len(batches):
                        ahead = pool.submit(contextvars.copy_context().run, download, batches[index + 1])
                    items = built()
                    added = self.store.emit(uidvalidity, batch[-1], items, since_ms=resync_since_ms or 0,
                                            by_fingerprint=resync_since_ms is not None)
                    self._count(result, len(batch), len(items), len(added))
                    self.metrics.last_uid.set(batch[-1])
                    progress.advance(len(batch))
        finally:
            builder.close()

    def _not_yet_emitted(self, batch: list[int], since_ms: int) -> list[int]:
        metas = self.fetcher.metadata(batch)
        seen = self.store.seen([m.fingerprint for m in metas])
        return [m.uid for m, done in zip(metas, seen, strict=True) if not done and m.internal_date_ms >= since_ms]

    def _count(self, result: PassResult, batch: int, fetched: int, added: int) -> None:
        result.seen += batch
        result.emitted += added
        self.metrics.produced.inc(added)
        self.metrics.dedup_skipped.inc(fetched - added)

    def _wait_for_room(self, should_stop: ShouldStop) -> bool:
        """Backpressure: block while the stream holds too many unacknowledged entries."""
        while self.guard.is_full():
            if not self.backpressured:
                log.warning("backpressure: stream full of unacknowledged entries, fetching paused",
                            extra={"max_stream_length": self.guard.max_unacked})
            self.backpressured = True
            self.metrics.backpressure.set(1)
            if self._wait(1.0) or should_stop():
                return False
        if self.backpressured:
            log.info("backpressure released, fetching resumed")
        self.backpressured = False
        self.metrics.backpressure.set(0)
        return True


def _now_ms() -> int:
    return int(time.time() * 1000)
