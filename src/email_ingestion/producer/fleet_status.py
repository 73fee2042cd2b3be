"""What the fleet keeps per mailbox it holds, and what /health, /ready, /status and the
per-mailbox gauges show of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from email_ingestion.monitoring.metrics import ProducerFamilies
from email_ingestion.producer.mailboxes import Mailbox
from email_ingestion.producer.runner import ProducerRunner


@dataclass(kw_only=True)
class MailboxTask:
    """A mailbox whose lease this producer holds, and the runner following it."""

    mailbox: Mailbox
    lease: str
    runner: ProducerRunner
    handing_over: bool = False  # stopped; its lease is released once the runner has ended
    offered: bool = False  # taken because another producer could not serve it: not counted in the share
    offer_after: bool = False  # given back because we cannot serve it: offered to the others once released
    failed: str | None = None  # why it is stopped by a permanent error, kept for lack of another taker
    state: str = "failed"  # when failed: "credentials" after invalid_grant (a person must re-authorise)
    retry_at: float = 0.0  # monotonic


class MailboxGauges:
    """The fleet's own per-mailbox metrics: does this producer hold it, is it stopped."""

    def __init__(self, families: ProducerFamilies) -> None:
        self.families = families

    def set(self, mailbox: Mailbox, *, owned: bool, failed: bool, credentials: bool = False) -> None:
        labels = (mailbox.account, mailbox.name)
        self.families.owned.labels(*labels).set(int(owned))
        self.families.failed.labels(*labels).set(int(failed))
        self.families.credentials.labels(*labels).set(int(credentials))


def all_alive(tasks: list[MailboxTask]) -> bool:
    """Every running mailbox's loop still ticks."""
    snapshots = [t.runner.snapshot() for t in tasks]
    return all(s.alive for s in snapshots if s.running)


def not_ready(tasks: list[MailboxTask]) -> list[str]:
    """Why the producer is not ready, per mailbox (empty: ready)."""
    reasons = []
    for task in tasks:
        snapshot = task.runner.snapshot()
        if task.failed:
            reasons.append(f"{task.mailbox.label}: stopped: {task.failed}")
        elif not snapshot.connected:
            reasons.append(f"{task.mailbox.label}: IMAP session not established")
        elif snapshot.backpressured:
            reasons.append(f"{task.mailbox.label}: backpressure: stream full of unacknowledged entries")
    return reasons


def mailbox_status(tasks: list[MailboxTask], mailboxes: list[Mailbox]) -> dict[str, Any]:
    """/status's `mailboxes` (those held, each with its state and sync figures) and `not_ours`."""
    following = []
    for task in tasks:
        state = task.state if task.failed else "handing over" if task.handing_over else "following"
        body = {**task.runner.status_body(), "stream_name": task.mailbox.stream, "lease": task.lease, "state": state}
        if task.failed:
            body["error"] = task.failed
        following.append(body)
    held = {t.mailbox.key for t in tasks}
    return {"mailboxes": following, "not_ours": [m.label for m in mailboxes if m.key not in held]}
