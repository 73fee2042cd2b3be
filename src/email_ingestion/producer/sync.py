"""One sync pass over one mailbox: decide where to start, fetch new mail in batches, emit.

Where a pass starts:
- no stored state: INITIAL_SYNC decides (all / new / since:DATE); with new/since the
  fingerprints of the mail skipped (the baseline) are recorded after the first pass's new
  mail, so a later re-created copy of that mail is recognised without any date;
- same UIDVALIDITY: after the stored last UID;
- UIDVALIDITY changed: a new epoch at position 0 (state.py); every message is looked at
  again, and one whose fingerprint was recorded in an earlier epoch is skipped, however
  late it reappears. Batches are checked by a header-only FETCH before they are downloaded
  (single new messages, as IDLE brings them, are checked by the emit script alone), so a
  re-created mailbox does not re-deliver itself, even when the re-sync is interrupted and
  resumed by another process. INTERNALDATE decides nothing: servers send dates before 1970,
  in the far future, or copies with the time of the copy.

A pass covers the UIDs below the UIDNEXT it saw at its start, one window at a time
(windows.py), and then looks again: mail that arrived meanwhile is synced in the same pass.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.logging import correlation
from email_ingestion.common.redis_client import redis_errors
from email_ingestion.common.settings import ProducerSettings
from email_ingestion.imap.session import ImapSession, MailboxStatus
from email_ingestion.monitoring.metrics import ProducerMetrics
from email_ingestion.producer.build_site import Builder, Built
from email_ingestion.producer.fetch import MessageFetcher
from email_ingestion.producer.gmail_prefetch import GmailPrefetch
from email_ingestion.producer.labels import LabelWatcher
from email_ingestion.producer.newest_first import CHUNK_BATCHES, SweepState, newest_first
from email_ingestion.producer.progress import PROGRESS_TTL_S, Progress
from email_ingestion.producer.state import MailboxState, StateStore, StreamGuard
from email_ingestion.producer.windows import Batch, UidWindows

log = logging.getLogger(__name__)

ShouldStop = Callable[[], bool]

# Baseline batches recorded before new mail is looked at again (10,000 messages at 500).
BASELINE_STEP_BATCHES = 20


@dataclass
class PassResult:
    seen: int = 0
    emitted: int = 0
    uidvalidity_changed: bool = False
    interrupted: bool = False
    label_events: int = 0


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
                 wait: Callable[[float], bool], make_builder: Callable[..., Builder],
                 clock_ms: Clock = wall_ms, gmail: GmailPrefetch | None = None,
                 label_watcher: LabelWatcher | None = None) -> None:
        self.session = session
        self.gmail = gmail  # Gmail: one event per X-GM-MSGID across the account's folders (issue 20)
        self.label_watcher = label_watcher
        self.sweeps = SweepState(store=store)
        self.progress: Progress | None = None  # of the step in progress, for /status
        self.store = store
        self.guard = guard
        self.fetcher = fetcher
        self.settings = settings
        self.metrics = metrics
        self._wait = wait  # sleeps, returning True early when asked to stop
        self._make_builder = make_builder
        self.clock_ms = clock_ms
        self.backpressured = False
        self.baseline_left = False  # the first run's baseline has more to record
        self._builder: Builder | None = None  # of the emit step in progress
        self._cut_off = False

    def run_pass(self, should_stop: ShouldStop) -> PassResult:
        with correlation() as pass_id:
            started = time.monotonic()
            result = PassResult()
            status = self.session.examine()
            if self.label_watcher is not None:
                self.label_watcher.prime(status.highest_modseq)
            result.emitted += self._emit_deferred(status, pass_id)
            while self._sync(status, pass_id, should_stop, result):
                # Mail that arrived during the pass was announced in the replies to the pass's
                # own commands and absorbed there; IDLE will not announce it again (§7).
                again = self.session.examine()
                if not (_has_new_mail(status, again) or self.baseline_left):
                    break
                status = again
            if self.label_watcher is not None and not (result.interrupted or should_stop()):
                result.label_events = self.label_watcher.check()
                self.metrics.label_events.inc(result.label_events)
            self.metrics.polls.inc()
            self.metrics.poll_duration.observe(time.monotonic() - started)
            self.guard.trim_acknowledged()
            if result.seen:
                log.info("sync pass done", extra={"new": result.seen, "emitted": result.emitted,
                                                  "duration_s": round(time.monotonic() - started, 3)})
            return result

    def extra_status(self) -> dict[str, object]:
        """/status: the sync step's progress, and on Gmail the account's download budget (issue 20)."""
        extra: dict[str, object] = {"sync_progress": self.progress.snapshot() if self.progress else None}
        budget = self.gmail.budget if self.gmail is not None and self.gmail.active else None
        if budget is not None:
            extra["gmail_download_budget"] = budget.state.snapshot()
        return extra

    def cut_off(self) -> None:
        """The shutdown's wait ran out (runner.abort): the batch being built is dropped
        unwritten instead of waited for; the position stays where the last write left it."""
        self._cut_off = True
        builder = self._builder
        if builder is not None:
            builder.cancel()

    def _cuttable_builder(self, batches: int, *, beat: Callable[[], object]) -> Builder:
        """Every builder of a pass is one cut_off() reaches (a build that never ends must
        not hold the shutdown, whichever step asked for it)."""
        builder = self._builder = self._make_builder(batches, beat=beat)
        if self._cut_off:  # cut off while this step was starting
            builder.cancel()
        return builder

    def _show_progress(self, progress: Progress) -> None:
        snapshot = progress.snapshot()
        self.metrics.sync_done.set(progress.done)
        self.metrics.sync_total.set(progress.total)
        self.metrics.sync_rate.set(float(snapshot["rate_per_s"] or 0))
        self.metrics.sync_eta.set(float(snapshot["eta_s"] or 0))
        if progress.done and isinstance(self.store, StateStore):  # for `email-ingest status`; informational
            with redis_errors("progress"):
                self.store.redis.set(self.store.keys.progress, json.dumps(snapshot), ex=PROGRESS_TTL_S)

    def _sync(self, status: MailboxStatus, pass_id: str, should_stop: ShouldStop, result: PassResult) -> bool:
        """Sync everything below `status`'s UIDNEXT; False when interrupted."""
        self.baseline_left = False
        stored = self.store.load()
        last = status.uidnext - 1 if status.uidnext else self.session.highest_uid()
        if stored is not None and stored.uidvalidity != status.uidvalidity:
            self.sweeps.clear()
            stored = self._begin_resync(status, stored, last, result)
        elif self._sweeping(stored):
            self._sweep(status, last, stored, pass_id, should_stop, result)
            return not (result.interrupted or should_stop())
        if stored is None:
            stored = self._first_start(status, last)
        start = stored.last_uid + 1 if stored else 1
        if start <= last:
            self._emit_range(_Range(start, last, status, stored), pass_id, should_stop, result)
        if stored is not None and stored.baseline_pending and not (result.interrupted or should_stop()):
            self._record_baseline(status.uidvalidity, stored, should_stop, result)
        return not (result.interrupted or should_stop())

    def _emit_deferred(self, status: MailboxStatus, pass_id: str) -> int:
        """Gmail: emit the messages this folder left to another one that never emitted them."""
        stored = self.store.load()
        if self.gmail is None or not self.gmail.active or stored is None or stored.uidvalidity != status.uidvalidity:
            return 0
        retry = self.gmail.retry_deferred(status.uidvalidity, self.settings.large_message_bytes)
        if not retry.uids:
            return 0
        downloaded = self.gmail.complete(self.fetcher.download(retry.uids, retry.large))
        builder = self._cuttable_builder(1, beat=lambda: None)
        try:
            items = builder.submit(downloaded, status.uidvalidity, pass_id)()
        finally:
            builder.close()
            self._builder = None
        added = self.store.emit(status.uidvalidity, stored.last_uid, items, since_ms=stored.since_ms)
        self.gmail.claims.forget(retry.msgids)
        self.metrics.produced.inc(len(added))
        return len(added)

    def _sweeping(self, stored: MailboxState | None) -> bool:
        """INITIAL_SYNC_ORDER=newest: a first sync starts (or resumes) a newest-first sweep."""
        if self.settings.initial_sync_order != "newest" or not isinstance(self.store, StateStore):
            return False  # (a dry run keeps no state to resume from)
        if stored is None:
            return self.settings.initial_sync != "new"
        return self.sweeps.load() is not None

    def _sweep(self, status: MailboxStatus, last: int, stored: MailboxState | None, pass_id: str,
               should_stop: ShouldStop, result: PassResult) -> None:
        sweep = self.sweeps.load() if stored is not None else None
        if sweep is None:
            bottom, since_ms = self._sweep_bottom(last)
            sweep = self.sweeps.start(uidvalidity=status.uidvalidity, top=last, bottom=bottom, since_ms=since_ms)
            stored = self.store.load()
        batches = newest_first(self._windows, bottom=sweep.bottom, top=sweep.floor - 1,
                               chunk_uids=self.settings.batch_size * CHUNK_BATCHES)
        span = _Range(sweep.bottom, sweep.floor - 1, status, stored)
        self._emit_range(span, pass_id, should_stop, result, batches=batches)
        if not (result.interrupted or should_stop()):
            self.sweeps.finish(uidvalidity=status.uidvalidity, sweep=sweep)

    def _sweep_bottom(self, last: int) -> tuple[int, int]:
        """The lowest UID a newest-first sweep goes down to, and the since baseline (ms)."""
        since = self.settings.since_date
        if since is None:
            return 1, 0
        first = self._windows(1, last).first_matching("SINCE", since) or last + 1
        return first, int(dt.datetime.combine(since, dt.time(), dt.UTC).timestamp() * 1000)

    def _first_start(self, status: MailboxStatus, last: int) -> MailboxState | None:
        """Where the very first pass starts (None: at UID 1); records the baseline's extent."""
        mode = self.settings.initial_sync
        if mode == "all":
            return None
        if mode == "new":
            log.info("first run with INITIAL_SYNC=new: existing mail skipped", extra={"baseline_uid": last})
            return self.store.start(status.uidvalidity, position=last, since_ms=self.clock_ms(), baseline_until=last)
        since = self.settings.since_date
        assert since is not None
        first = self._windows(1, last).first_matching("SINCE", since) or last + 1
        since_ms = int(dt.datetime.combine(since, dt.time(), dt.UTC).timestamp() * 1000)
        return self.store.start(status.uidvalidity, position=first - 1, since_ms=since_ms, baseline_until=first - 1)

    def _record_baseline(self, uidvalidity: int, stored: MailboxState, should_stop: ShouldStop,
                         result: PassResult) -> None:
        """Record the fingerprints of the mail the first run skipped (header-only FETCHes),
        a step of BASELINE_STEP_BATCHES batches at a time so that new mail is looked at in
        between; resumable: the state says how far it got."""
        log.info("recording fingerprints of the mail present at the first run",
                 extra={"from_uid": stored.baseline_at + 1, "to_uid": stored.baseline_until})
        for count, batch in enumerate(self._windows(stored.baseline_at + 1, stored.baseline_until)):
            if should_stop():
                result.interrupted = True
                return
            if count == BASELINE_STEP_BATCHES:
                self.baseline_left = True
                return
            metas = self.fetcher.metadata(batch.uids)
            if not self.store.record_baseline(uidvalidity, [m.fingerprint for m in metas], batch.uids[-1]):
                return  # the UIDVALIDITY moved on: the old UIDs mean nothing any more
        self.store.record_baseline(uidvalidity, [], stored.baseline_until)

    def _begin_resync(self, status: MailboxStatus, stored: MailboxState, last: int,
                      result: PassResult) -> MailboxState:
        log.warning("UIDVALIDITY changed: re-checking the mailbox, already emitted messages are skipped",
                    extra={"old_uidvalidity": stored.uidvalidity, "new_uidvalidity": status.uidvalidity,
                           "resync_until_uid": last})
        self.metrics.uidvalidity_changes.inc()
        if stored.baseline_pending:
            log.warning("UIDVALIDITY changed before the first run's baseline was recorded: mail present then "
                        "and not recorded may be delivered by this re-sync",
                        extra={"baseline_at_uid": stored.baseline_at, "baseline_until_uid": stored.baseline_until})
        result.uidvalidity_changed = True
        return self.store.begin_resync(status.uidvalidity, last)

    def _windows(self, first_uid: int, last_uid: int) -> UidWindows:
        return UidWindows(session=self.session, first_uid=first_uid, last_uid=last_uid,
                          batch_size=self.settings.batch_size, large_bytes=self.settings.large_message_bytes)

    def _emit_range(self, span: _Range, pass_id: str, should_stop: ShouldStop, result: PassResult,
                    batches: Iterator[Batch] | None = None) -> None:
        """Emit the UIDs of `span` in batches (ascending, or the newest-first sweep's
        `batches`). After a UIDVALIDITY change only messages not recorded in
        an earlier epoch go out."""
        descending = batches is not None
        expected = min(span.status.exists, span.last_uid - span.first_uid + 1)
        progress = self.progress = Progress(total=expected, interval_s=self.settings.progress_interval_seconds,
                                            label=self.session.settings.mailbox, on_advance=self._show_progress)
        batches_expected = -(-expected // self.settings.batch_size)
        builder = self._cuttable_builder(batches_expected, beat=should_stop)  # liveness moves per message
        batches = batches if batches is not None else iter(self._windows(span.first_uid, span.last_uid))
        uidvalidity = span.status.uidvalidity
        since_ms = span.stored.since_ms if span.stored else 0

        def download() -> _Fetched | None:
            if should_stop():
                return None  # nothing more read ahead once asked to stop
            batch = next(batches, None)  # may search the next window: this thread only
            if batch is None:
                return None
            gmail = self.gmail if self.gmail is not None and self.gmail.active else None
            # On Gmail the account's identity store decides, re-sync or not (gmail_identity.py).
            todo = gmail.to_download(batch.uids, uidvalidity) if gmail else self._to_fetch(batch, span.stored)
            downloaded = self.fetcher.download(todo, batch.large)
            if gmail:
                downloaded = gmail.complete(downloaded)
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
                    # A sweep leaves the position alone (UIDs below are not done) and stores its floor.
                    position = 0 if descending else fetched.batch.uids[-1]
                    added = self.store.emit(uidvalidity, position, items, since_ms=since_ms)
                    if descending:
                        self.sweeps.done_down_to(fetched.batch.uids[0])
                    self._count(result, fetched, len(added))
                    self.metrics.last_uid.set(fetched.batch.uids[-1])
                    progress.advance(len(fetched.batch.uids))
        finally:
            builder.close()  # waits for a build in hand, unless the shutdown cuts it off
            self._builder = None

    def _to_fetch(self, batch: Batch, stored: MailboxState | None) -> list[int]:
        """The UIDs of `batch` to download: after a UIDVALIDITY change, those whose
        fingerprint was not recorded in an earlier epoch (or that a reset replays)."""
        if stored is None or not _worth_checking(batch, stored):
            return batch.uids
        replayed = [uid for uid in batch.uids if uid <= stored.replay_until]
        check = [uid for uid in batch.uids if uid > stored.replay_until]
        return replayed + self._not_recorded_before(check, stored.uidvalidity)

    def _not_recorded_before(self, uids: list[int], uidvalidity: int) -> list[int]:
        if not uids:
            return []
        metas = self.fetcher.metadata(uids)
        # The legacy form (with INTERNALDATE) only finds what older versions recorded; no
        # date ever makes a message count as new or old here.
        gated = self.store.gated(uidvalidity, [fp for m in metas for fp in (m.fingerprint, m.legacy_fingerprint)])
        return [m.uid for index, m in enumerate(metas) if not (gated[2 * index] or gated[2 * index + 1])]

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


def _worth_checking(batch: Batch, stored: MailboxState) -> bool:
    """A header-only FETCH before the download pays where old mail is likely: the range
    known at the change, and any batch of several messages after one (a refill). A single
    message is downloaded and checked by the emit script, which always decides."""
    if batch.uids[0] <= stored.resync_until:
        return True
    return (stored.epoch > 0 or stored.resync_until > 0) and len(batch.uids) > 1


def _has_new_mail(before: MailboxStatus, after: MailboxStatus) -> bool:
    if after.uidvalidity != before.uidvalidity:
        return True
    if after.uidnext is not None and before.uidnext is not None:
        return after.uidnext > before.uidnext
    return after.exists != before.exists
