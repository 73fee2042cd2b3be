"""Pure logic of the Gmail support (issue 20): special-use names, own labels, progress bar, sweep order."""

from __future__ import annotations

import io

import pytest

from email_ingestion.common.errors import MailboxNotFoundError
from email_ingestion.imap.special_use import Folder, own_label, resolve
from email_ingestion.producer.gmail_identity import decode_labels, encode_labels
from email_ingestion.producer.newest_first import newest_first
from email_ingestion.producer.progress import Progress
from email_ingestion.producer.windows import Batch

LISTING = [((b"\\HasChildren", b"\\Noselect"), b"/", "[Google Mail]"), ((b"\\HasNoChildren",), b"/", "INBOX"),
           ((b"\\All", b"\\HasNoChildren"), b"/", "[Google Mail]/Alle Nachrichten"),
           ((b"\\Sent",), b"/", "[Google Mail]/Gesendet"), ((), b"/", "Work")]


@pytest.mark.parametrize(("configured", "expected"), [
    ("\\All", "[Google Mail]/Alle Nachrichten"), ("\\all", "[Google Mail]/Alle Nachrichten"),
    ("\\Sent", "[Google Mail]/Gesendet"), ("Work", "Work"), ("INBOX", "INBOX"), ("Missing", "Missing"),
])
def test_special_use_names_resolve_to_the_localised_folder(configured, expected):
    """A SPECIAL-USE name resolves through LIST whatever the folder's localised name; others stay as given."""
    assert resolve(configured, LISTING).name == expected


def test_an_unknown_special_use_name_is_a_settings_error():
    """A special-use attribute no folder has is refused, naming RFC 6154 and the server's folders."""
    with pytest.raises(MailboxNotFoundError, match=r"\\Junk.*RFC 6154"):
        resolve("\\Junk", LISTING)


@pytest.mark.parametrize(("folder", "label"), [
    (Folder("INBOX"), "\\Inbox"), (Folder("[Gmail]/All Mail", frozenset({"\\All"})), None),
    (Folder("[Gmail]/Sent Mail", frozenset({"\\Sent"})), "\\Sent"),
    (Folder("[Gmail]/Starred", frozenset({"\\Flagged"})), "\\Starred"),
    (Folder("[Gmail]/Spam", frozenset({"\\Junk"})), "\\Spam"), (Folder("Work/Sub"), "Work/Sub"),
    (Folder("[Gmail]/Unknown"), None),
])
def test_each_folder_shows_one_label(folder, label):
    """The label a folder is a view of, as X-GM-LABELS names it."""
    assert own_label(folder) == label


def test_labels_round_trip_sorted_and_unique():
    """The stored label set is order-free, so folders reading the same labels compare equal."""
    assert encode_labels(["b", "\\Inbox", "b"]) == encode_labels(["\\Inbox", "b"])
    assert decode_labels(encode_labels(["Wörk", "\\Inbox"])) == {"Wörk", "\\Inbox"}
    assert decode_labels(None) == frozenset()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    """The live bar is drawn on a terminal and never on a pipe or journal."""
    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        progress = Progress(total=10, interval_s=60, label="INBOX", terminal=stream)
        progress.advance(5)
    assert "INBOX [" in tty.getvalue() and "5/10" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_newest_first_yields_the_highest_batches_first():
    """The sweep asks for windows from the top down and yields each window's batches newest first."""
    asked: list[tuple[int, int]] = []

    def windows(low: int, high: int) -> list[Batch]:
        asked.append((low, high))
        return [Batch(list(range(u, min(u + 2, high + 1))), frozenset()) for u in range(low, high + 1, 2)]

    batches = [b.uids for b in newest_first(windows, bottom=1, top=7, chunk_uids=4)]  # type: ignore[arg-type]
    assert asked == [(4, 7), (1, 3)]
    assert batches == [[6, 7], [4, 5], [3], [1, 2]]


def test_a_budget_wait_keeps_the_loop_alive_and_ends_on_stop():
    """The download budget's wait ticks the runner's pulse every second and returns True once asked to stop."""
    import threading

    from email_ingestion.producer.download_budget import Pulse
    ticks: list[int] = []
    pulse = Pulse(threading.Event())
    pulse.should_stop = lambda: ticks.append(1) is not None or len(ticks) > 3
    assert pulse.wait(30) is True and len(ticks) == 4
