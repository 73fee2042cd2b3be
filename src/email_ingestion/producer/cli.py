"""`python producer.py`: follow mailboxes and append each new message to the Redis Stream.

One mailbox from the IMAP_ settings, or every mailbox of MAILBOXES_FILE; with several
producers on the same list, each mailbox is followed by one of them at a time (fleet.py).

Exit status: 0 stopped cleanly (or --once done), 1 gave up on a failure (--once), 2 bad
setting, 3 credentials refused (a person must act: see the message).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from email_ingestion.auth.oauth2_gmail import TokenStore, XOAuth2Authenticator, run_setup
from email_ingestion.auth.password import PasswordAuthenticator
from email_ingestion.common.cli_args import add_version
from email_ingestion.common.errors import AuthError, SettingsError
from email_ingestion.common.exits import EXIT_AUTH, EXIT_OK, EXIT_SETTINGS, run_guarded
from email_ingestion.common.keys import MailboxKeys, dlq_stream
from email_ingestion.common.logging import Redactor, setup_logging
from email_ingestion.common.redis_client import Replication, describe, make_redis
from email_ingestion.common.settings import Settings, load_settings, log_warnings
from email_ingestion.imap.session import Authenticator, ImapSession
from email_ingestion.monitoring.collectors import ProcessCollector, StreamCollector, StreamsCollector, stream_figures
from email_ingestion.monitoring.health import start_health
from email_ingestion.monitoring.metrics import ProducerFamilies, ProducerMetrics
from email_ingestion.producer.activity import Activity, no_activity
from email_ingestion.producer.build_site import BuildPool, builder_factory
from email_ingestion.producer.download_budget import BudgetState, DownloadBudget, Pulse
from email_ingestion.producer.dry_run import DryRunStore, NullGuard
from email_ingestion.producer.fetch import MessageFetcher
from email_ingestion.producer.fleet import ProducerFleet
from email_ingestion.producer.gmail_identity import GmailStateStore
from email_ingestion.producer.gmail_prefetch import GmailPrefetch
from email_ingestion.producer.labels import LabelWatcher
from email_ingestion.producer.mailboxes import Mailbox, fleet_name, load_mailboxes
from email_ingestion.producer.ownership import Ownership
from email_ingestion.producer.payloads import PayloadBuilder
from email_ingestion.producer.runner import ProducerRunner
from email_ingestion.producer.state import StreamGuard
from email_ingestion.producer.sync import MailboxSync

log = logging.getLogger("email_ingestion.producer")
# Helper processes building payloads for all the mailboxes of a MAILBOXES_FILE producer: two,
# so one mailbox's hostile message (up to 5 s of CPU) never holds up every other mailbox,
# and about 120 MB however many mailboxes there are.
FLEET_BUILD_HELPERS = 2



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version(p)
    p.add_argument("--once", action="store_true", help="one sync pass, then exit 0 (cron, tests)")
    p.add_argument("--dry-run", action="store_true", help="fetch and parse, print a line per message, write nothing")
    p.add_argument("--auth-setup", action="store_true", help="authorise Gmail access in a browser, write GOOGLE_TOKEN_FILE")
    p.add_argument("--env-file", default=".env", help="settings file (default .env)")
    p.add_argument("--username", help="IMAP_USER")
    p.add_argument("--mailbox", help="IMAP_MAILBOX")
    p.add_argument("--host", help="IMAP_HOST")
    p.add_argument("--port", type=int, help="IMAP_PORT")
    p.add_argument("--batch-size", type=int, help="BATCH_SIZE: UIDs per UID FETCH")
    p.add_argument("--poll-interval", type=float, help="POLL_INTERVAL_SECONDS")
    p.add_argument("--initial-sync", help="INITIAL_SYNC: all | new | since:YYYY-MM-DD")
    p.add_argument("--redis-url", help="REDIS_URL")
    p.add_argument("--stream", help="REDIS_STREAM_NAME")
    p.add_argument("--metrics-port", type=int, help="PRODUCER_METRICS_PORT (0 disables)")
    p.add_argument("--log-level", help="LOG_LEVEL")
    p.add_argument("--log-format", choices=("json", "text"), help="LOG_FORMAT")
    return p.parse_args(argv)


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {
        "imap": {"user": args.username, "mailbox": args.mailbox, "host": args.host, "port": args.port},
        "redis": {"url": args.redis_url, "stream_name": args.stream},
        "producer": {"batch_size": args.batch_size, "poll_interval_seconds": args.poll_interval,
                     "initial_sync": args.initial_sync, "producer_metrics_port": args.metrics_port},
        "log": {"level": args.log_level, "format": args.log_format},
    }


def build_authenticator(settings: Settings, redactor: Redactor, metrics: ProducerMetrics) -> Authenticator:
    if settings.imap.auth_method == "password":
        assert settings.imap.password is not None
        return PasswordAuthenticator(password=settings.imap.password)

    def on_new_token(token: str) -> None:
        redactor.add_secret(token)
        metrics.oauth_refreshes.inc()

    store = TokenStore(settings=settings.google, on_new_token=on_new_token,
                       on_refresh_failed=metrics.oauth_failures.inc)
    return XOAuth2Authenticator(store=store)


def build_runner(settings: Settings, stop_event: threading.Event, redactor: Redactor,
                 dry_run: bool = False, *, fence: str = "", client: Any = None,
                 families: ProducerFamilies | None = None, builds: BuildPool | None = None,
                 inbox_followed: bool = False) -> ProducerRunner:
    """Wire one mailbox's runner from its settings; nothing connects until it runs. With
    `fence` (the mailbox's lease value) its writes stop the moment the lease is lost."""
    imap = settings.imap
    metrics = ProducerMetrics(imap.user, imap.mailbox, families)
    session = ImapSession(settings=imap, authenticator=build_authenticator(settings, redactor, metrics),
                          on_throttled=metrics.throttled.inc, wait=stop_event.wait)
    fetcher = MessageFetcher(session=session, settings=settings.producer)
    if dry_run:
        store: Any = DryRunStore(on_closed=stop_event.set)
        guard: Any = NullGuard()
        activity = no_activity()
    else:
        client = client or make_redis(settings.redis)
        keys = MailboxKeys(settings.redis.stream_name, imap.user, imap.mailbox)
        store = GmailStateStore(client=client, keys=keys, replication=Replication.from_settings(settings.redis),
                                fence=fence, fingerprints_kept=settings.producer.fingerprints_per_mailbox)
        activity = Activity(client, keys, producer_id=producer_id(settings))
        guard = StreamGuard(client=client, stream=settings.redis.stream_name,
                            max_unacked=settings.redis.max_stream_length)
    make_builder = builder_factory(PayloadBuilder(account=imap.user, mailbox=imap.mailbox),
                                   pool=builds or build_pool(settings, size=1))
    pulse = Pulse(stop_event)  # waits for the download budget tick the runner's liveness
    gmail = None if dry_run else GmailPrefetch(session=session, store=store, defer_inbox=inbox_followed,
                                               budget=_budget(settings, store.redis, metrics, pulse))
    labels = (LabelWatcher(session=session, store=store, account=imap.user, mailbox=imap.mailbox)
              if settings.producer.gmail_label_events and not dry_run else None)
    sync = MailboxSync(session=session, store=store, guard=guard, fetcher=fetcher, settings=settings.producer,
                       metrics=metrics, wait=stop_event.wait, make_builder=make_builder, gmail=gmail,
                       label_watcher=labels)
    runner = ProducerRunner(settings=settings, session=session, sync=sync, metrics=metrics, stop_event=stop_event,
                            activity=activity)
    pulse.should_stop = runner.should_stop
    return runner


def _budget(settings: Settings, client: Any, metrics: ProducerMetrics, pulse: Pulse) -> DownloadBudget:
    def show(state: BudgetState) -> None:
        metrics.gmail_waiting.set(int(state.waiting))
        metrics.gmail_used.set(state.used_bytes)

    return DownloadBudget(client=client, stream=settings.redis.stream_name, account=settings.imap.user,
                          limit_bytes=int(settings.producer.gmail_daily_download_mb * 1_000_000),
                          wait=pulse.wait, on_change=show)


def build_pool(settings: Settings, *, size: int) -> BuildPool:
    """The helper processes that build payloads (producer/build_site.py), started on first use."""
    return BuildPool(size=size, log_level=settings.log.level, log_format=settings.log.format,
                     secrets=settings.secrets())


def build_fleet(settings: Settings, mailboxes: list[Mailbox], stop_event: threading.Event,
                redactor: Redactor) -> ProducerFleet:
    """The long-running producer: every mailbox of the list, one Redis client, one registry."""
    client = make_redis(settings.redis)
    families = ProducerFamilies()
    # Gmail: All Mail leaves INBOX mail to INBOX when both are followed (gmail_claims.py).
    with_inbox = {(m.stream, m.account) for m in mailboxes if m.name.upper() == "INBOX"}
    ownership = Ownership(client, producer_id=producer_id(settings),
                          fleet=fleet_name(mailboxes), lease_ms=settings.producer.producer_lease_ms)

    builds = build_pool(settings, size=FLEET_BUILD_HELPERS)

    def make_runner(mailbox: Mailbox, lease: str) -> ProducerRunner:
        return build_runner(mailbox.settings, threading.Event(), redactor, fence=lease, client=client,
                            families=families, builds=builds,
                            inbox_followed=(mailbox.stream, mailbox.account) in with_inbox)

    fleet = ProducerFleet(mailboxes=mailboxes, ownership=ownership, make_runner=make_runner, stop_event=stop_event,
                          exit_on_permanent=settings.producer.mailboxes_file is None,
                          stall_s=settings.health.stall_seconds, families=families)
    expose(fleet, settings, client, families, mailboxes)
    return fleet


def expose(fleet: ProducerFleet, settings: Settings, client: Any, families: ProducerFamilies,
           mailboxes: list[Mailbox]) -> None:
    """/health, /ready, /status and /metrics on PRODUCER_METRICS_PORT (0: none), one set
    per process whatever the number of mailboxes."""
    group, dlq_name = settings.worker.group, settings.retry.dlq_stream_name
    streams = sorted({m.stream for m in mailboxes})
    registry = families.registry
    registry.register(StreamsCollector([StreamCollector(client, s, group, dlq_stream(s, dlq_name)) for s in streams]))
    registry.register(ProcessCollector(fleet, [], "producer", mailbox_breakers=fleet.breakers))

    def ready() -> tuple[bool, str]:
        client.ping()
        reasons = fleet.not_ready()
        return (False, "; ".join(reasons)) if reasons else (True, "ok")

    def status() -> dict[str, Any]:
        body = fleet.status_body()
        if len(mailboxes) == 1 and body["mailboxes"]:  # one mailbox: its figures at the top, as always
            body = {**body["mailboxes"][0], **body}
        body["stream"] = stream_figures(client, streams[0], group, dlq_stream(streams[0], dlq_name))
        if len(streams) > 1:
            body["streams"] = {s: stream_figures(client, s, group, dlq_stream(s, dlq_name)) for s in streams}
        return body

    start_health(registry, fleet, ready, status, settings.producer.producer_metrics_port,
                 settings.health.host, "PRODUCER_METRICS_PORT")


def install_signal_handlers(stop_event: threading.Event) -> None:
    def handle(signum: int, _frame: Any) -> None:
        if not stop_event.is_set():
            log.info("stop requested: finishing the batch in hand", extra={"signal": signal.Signals(signum).name})
        stop_event.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(overrides(args), env_file=args.env_file)
        if args.auth_setup:
            print(f"token written to {run_setup(settings.google)} (mode 0600)")
            return EXIT_OK
        load_mailboxes(settings)  # every mailbox's settings checked before anything starts
    except SettingsError as exc:
        print(f"producer: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    except AuthError as exc:
        print(f"producer: {exc}", file=sys.stderr)
        return EXIT_AUTH
    redactor = Redactor(settings.secrets())
    setup_logging(settings.log.level, settings.log.format, "producer", redactor)
    log_warnings(settings, log)
    stop_event = threading.Event()
    install_signal_handlers(stop_event)
    code = run(settings, stop_event, redactor, once=args.once, dry_run=args.dry_run)
    if stop_event.is_set() and _left_behind():
        # A mailbox cut off at the end of its shutdown wait (a slow read or build) leaves a
        # thread that the interpreter would wait for at exit: the promise is to stop within
        # 10 s, and what it had not written is fetched again by the next owner.
        log.warning("exiting with work cut off", extra={"threads": _left_behind()})
        logging.shutdown()
        os._exit(code)
    return code


def _left_behind() -> list[str]:
    """Threads still running that the interpreter would join at exit."""
    main = threading.main_thread()
    return [t.name for t in threading.enumerate() if t is not main and t.is_alive() and not t.daemon]


def run(settings: Settings, stop_event: threading.Event, redactor: Redactor, once: bool, dry_run: bool) -> int:
    return run_guarded(lambda: _run(settings, stop_event, redactor, once, dry_run), "producer", log)


def _run(settings: Settings, stop_event: threading.Event, redactor: Redactor, once: bool, dry_run: bool) -> None:
    mailboxes = load_mailboxes(settings)
    for mailbox in mailboxes:
        for secret in mailbox.settings.secrets():  # passwords named by password_env
            redactor.add_secret(secret)
        log.info("producer starting", extra={
            "account": mailbox.account, "mailbox": mailbox.name, "imap_host": mailbox.settings.imap.host,
            "auth": mailbox.settings.imap.auth_method, "redis": describe(settings.redis),
            "stream": mailbox.stream, "once": once, "dry_run": dry_run})
    if dry_run:
        for mailbox in mailboxes:
            build_runner(mailbox.settings, stop_event, redactor, dry_run=True).run(once=True)
    else:
        fleet = build_fleet(settings, mailboxes, stop_event, redactor)
        if once:
            fleet.run_once()
        else:
            fleet.run()


def producer_id(settings: Settings) -> str:
    return settings.producer.producer_id or socket.gethostname()
