"""The JSONL handler's file reading, table-driven on real files: complete lines across block
boundaries, the start of the newest-records window, keys read from a line's head."""

from __future__ import annotations

import os

import pytest

from email_ingestion.sandbox.sample_payloads import make_payload
from email_ingestion.worker import jsonl_handler
from email_ingestion.worker.jsonl_handler import complete_lines, key_of, window_start

LONG = b"x" * (3 * (1 << 16) + 5)  # longer than three blocks


@pytest.mark.parametrize(("content", "lines"), [
    (b"", []),
    (b"a\n", [b"a\n"]),
    (b"a\nb", [b"a\n"]),  # a partial last line is not a line
    (b"a\n" + LONG + b"\nc\n", [b"a\n", LONG + b"\n", b"c\n"]),
    (LONG + b"\n" + LONG, [LONG + b"\n"]),
    (b"\n\n", [b"\n", b"\n"]),
])
def test_complete_lines(tmp_path, content, lines):
    """Every complete line once, whole, whatever the block boundaries."""
    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert list(complete_lines(fd, 0, len(content))) == lines
    finally:
        os.close(fd)


@pytest.mark.parametrize(("content", "records", "start"), [
    (b"a\nb\nc\n", 2, 2), (b"a\nb\nc\n", 3, 0), (b"a\nb\nc\n", 9, 0), (b"", 5, 0), (b"a\nb\nc\npart", 1, 4),
])
def test_window_start(tmp_path, monkeypatch, content, records, start):
    """The window begins at the newest `records` lines, read backwards in small blocks."""
    monkeypatch.setattr(jsonl_handler, "_BLOCK", 2)
    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert window_start(fd, len(content), records) == start
    finally:
        os.close(fd)


def test_key_of_reads_our_lines_and_skips_foreign_ones():
    """Our records give their key from the line's head; foreign or damaged lines give None."""
    payload = make_payload(1, account='we"ird\\name@x')
    assert key_of(payload.to_json().encode() + b"\n") == payload.idempotency_key
    assert key_of(b'{"idempotency_key": "k", "other": 1}\n') == "k"
    assert key_of(b"not json\n") is None and key_of(b'{"idempotency_key": 5}\n') is None
