"""One sync pass over one mailbox: decide where to start, fetch new mail in batches, emit.

Where a pass starts:
- no stored state: INITIAL_SYNC decides (all / new / since:DATE);
- same UIDVALIDITY: after the stored last UID;
- UIDVALIDITY changed: the new UIDVALIDITY is stored with the highest UID the mailbox has
  (`resync_until`); every message up to there is looked at again, but only its fingerprint
  is fetched first; messages already emitted (or older than the first sync's baseline) are
  skipped, so a re-created mailbox does not re-deliver itself, even when the re-sync is
  interrupted and resumed by another process.

A pass covers the UIDs below the UIDNEXT it saw at its start, one window at a time
(windows.py), and then looks again: mail that arrived meanwhile is synced in the same pass.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.logging import correlation
from email_ingestion.common.settings import ProducerSettings
from email_ingestion.imap.session import ImapSession, MailboxStatus
from email_ingestion.monitoring.metrics import ProducerMetrics
from email_ingestion.producer.activity import Activity, no_activity
from email_ingestion.producer.build_site import Builder, Built
from email_ingestion.producer.fetch import MessageFetcher
from email_ingestion.producer.progress import Progress
from email_ingestion.producer.state import MailboxState, StateStore, StreamGuard
from email_ingestion.producer.windows import Batch, UidWindows

log = logging.getLogger(__name__)

ShouldStop = Callable[[], bool]


@dataclass
class PassResult:
    seen: int = 0
    emitted: int = 0
    uidvalidity_changed: bool = False
    interrupted: bool = False


@dataclass(frozen=True)
class _Fetched:
    """One batch downloaded by the read-ahead thread, ready to build."""

    batch: Batch
    built: Built
    vanished: int  # expunged between SEARCH and FETCH


@dataclass(frozen=True)
class _Range:
    """The UIDs one sync step covers, and the state it started from."""

    first_uid: int
    last_uid: int
    status: MailboxStatus
    stored: MailboxState | None


class MailboxSync:
    def __init__(self, *, session: ImapSession, store: StateStore, guard: StreamGuard,
                 fetcher: MessageFetcher, settings: ProducerSettings, metrics: ProducerMetrics,
                 wait: Callable[[float], bool], make_builder: Callable[[int], Builder],
                 clock_ms: Clock = wall_ms, activity: Activity | None = None) -> None:
        self.session = session
        self.activity = activity or no_activity()  # sync progress for the console
        self.store = store
        self.guard = guard
        self.fetcher = fetcher
        self.settings = settings
        self.metrics = metrics
        self._wait = wait  # sleeps, returning True early when asked to stop
        self._make_builder = make_builder
        self.clock_ms = clock_ms
        self.backpressured = False

    def run_pass(self, should_stop: ShouldStop) -> PassResult:
        with correlation() as pass_id:
            started = time.monotonic()
            result = PassResult()
            status = self.session.examine()
            while self._sync(status, pass_id, should_stop, result):
                # Mail that arrived during the pass was announced in the replies to the pass's
                # own commands and absorbed there; IDLE will not announce it again (§7).
                again = self.session.examine()
                if not _has_new_mail(status, again):
                    break
                status = again
            self.metrics.polls.inc()
            self.metrics.poll_duration.observe(time.monotonic() - started)
            self.guard.trim_acknowledged()
            if result.seen:
                log.info("sync pass done", extra={"new": result.seen, "emitted": result.emitted,
                                                  "duration_s": round(time.monotonic() - started, 3)})
            return result

    def _sync(self, status: MailboxStatus, pass_id: str, should_stop: ShouldStop, result: PassResult) -> bool:
        """Sync everything below `status`'s UIDNEXT; False when interrupted."""
        stored = self.store.load()
        last = status.uidnext - 1 if status.uidnext else self.session.highest_uid()
        if stored is not None and stored.uidvalidity != status.uidvalidity:
            stored = self._begin_resync(status, stored, last, result)
        start = stored.last_uid + 1 if stored else self._first_start(status, last)
        if start <= last:
            self._emit_range(_Range(start, last, status, stored), pass_id, should_stop, result)
        return not (result.interrupted or should_stop())

    def _first_start(self, status: MailboxStatus, last: int) -> int:
        """Where the very first pass starts; records the baseline for later resyncs."""
        mode = self.settings.initial_sync
        if mode == "all":
            return 1
        if mode == "new":
            self.store.emit(status.uidvalidity, last, [], since_ms=self.clock_ms())
            log.info("first run with INITIAL_SYNC=new: existing mail skipped", extra={"baseline_uid": last})
            return last + 1
        since = self.settings.since_date
        assert since is not None
        first = self._windows(1, last).first_matching("SINCE", since) or last + 1
        since_ms = int(dt.datetime.combine(since, dt.time(), dt.UTC).timestamp() * 1000)
        self.store.emit(status.uidvalidity, first - 1, [], since_ms=since_ms)
        return first

    def _begin_resync(self, status: MailboxStatus, stored: MailboxState, last: int,
                      result: PassResult) -> MailboxState:
        log.warning("UIDVALIDITY changed: re-checking the mailbox, already emitted messages are skipped",
                    extra={"old_uidvalidity": stored.uidvalidity, "new_uidvalidity": status.uidvalidity,
                           "resync_until_uid": last})
        self.metrics.uidvalidity_changes.inc()
        result.uidvalidity_changed = True
        return self.store.begin_resync(status.uidvalidity, last)

    def _windows(self, first_uid: int, last_uid: int) -> UidWindows:
        return UidWindows(session=self.session, first_uid=first_uid, last_uid=last_uid,
                          batch_size=self.settings.batch_size, large_bytes=self.settings.large_message_bytes)

    def _emit_range(self, span: _Range, pass_id: str, should_stop: ShouldStop, result: PassResult) -> None:
        """Emit the UIDs of `span` in batches. While a re-sync is in progress, only messages
        never emitted and not older than the first run's baseline go out."""
        expected = min(span.status.exists, span.last_uid - span.first_uid + 1)
        progress = Progress(total=expected, interval_s=self.settings.progress_interval_seconds)
        builder = self._make_builder(-(-expected // self.settings.batch_size))
        batches = iter(self._windows(span.first_uid, span.last_uid))
        uidvalidity = span.status.uidvalidity
        since_ms = span.stored.since_ms if span.stored else 0

        def download() -> _Fetched | None:
            batch = next(batches, None)  # may search the next window: this thread only
            if batch is None:
                return None
            todo = self._to_fetch(batch, span.stored)
            downloaded = self.fetcher.download(todo, batch.large)
            built = builder.submit(downloaded, uidvalidity, pass_id)
            return _Fetched(batch, built, len(todo) - len(downloaded.messages))

        # Read ahead: the next batch downloads (network-bound) while this one is built and
        # written. Only that thread touches the IMAP connection until the step ends.
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imap-read-ahead") as pool:
                for fetched in _read_ahead(pool, download):
                    if should_stop() or not self._wait_for_room(should_stop):
                        result.interrupted = True
                        return
                    items = fetched.built()
                    added = self.store.emit(uidvalidity, fetched.batch.uids[-1], items, since_ms=since_ms)
                    self._count(result, fetched, len(added))
                    self.metrics.last_uid.set(fetched.batch.uids[-1])
                    progress.advance(len(fetched.batch.uids))
                    self.activity.progress(progress.done, progress.total)
        finally:
            builder.close()

    def _to_fetch(self, batch: Batch, stored: MailboxState | None) -> list[int]:
        """The UIDs of `batch` to download: during a re-sync, those not yet emitted."""
        if stored is None or batch.uids[0] > stored.resync_until:
            return batch.uids
        check = [uid for uid in batch.uids if uid <= stored.resync_until]
        rest = [uid for uid in batch.uids if uid > stored.resync_until]
        return self._not_yet_emitted(check, stored.since_ms) + rest

    def _not_yet_emitted(self, uids: list[int], since_ms: int) -> list[int]:
        metas = self.fetcher.metadata(uids)
        seen = self.store.seen([fp for m in metas for fp in (m.fingerprint, m.legacy_fingerprint)])
        return [m.uid for index, m in enumerate(metas)
                if not (seen[2 * index] or seen[2 * index + 1]) and m.internal_date_ms >= since_ms]

    def _count(self, result: PassResult, fetched: _Fetched, added: int) -> None:
        result.seen += len(fetched.batch.uids)
        result.emitted += added
        self.metrics.produced.inc(added)
        self.metrics.expunged_skipped.inc(fetched.vanished)
        self.metrics.dedup_skipped.inc(len(fetched.batch.uids) - fetched.vanished - added)

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


def _read_ahead(pool: ThreadPoolExecutor, download: Callable[[], _Fetched | None]) -> Iterator[_Fetched]:
    """Each batch as it is ready, with the download of the next one already started."""
    def submit() -> Future[_Fetched | None]:
        return pool.submit(contextvars.copy_context().run, download)

    ahead = submit()
    while (fetched := ahead.result()) is not None:
        ahead = submit()
        yield fetched


def _has_new_mail(before: MailboxStatus, after: MailboxStatus) -> bool:
    if after.uidvalidity != before.uidvalidity:
        return True
    if after.uidnext is not None and before.uidnext is not None:
        return after.uidnext > before.uidnext
    return after.exists != before.exists
