"""The JSONL handler's file reading, table-driven on real files: complete lines across block
boundaries, forwards and backwards, the newest-records window, keys read from a line's head."""

from __future__ import annotations

import os

import pytest

from email_ingestion.sandbox.sample_payloads import make_payload
from email_ingestion.worker import jsonl_handler
from email_ingestion.worker.jsonl_handler import complete_lines, key_of, lines_backwards, newest_keys

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


@pytest.mark.parametrize(("content", "lines"), [
    (b"", []), (b"part", []), (b"a\n", [(2, b"a\n")]), (b"a\nb\nc\n", [(6, b"c\n"), (4, b"b\n"), (2, b"a\n")]),
    (b"a\nb\nc\npart", [(6, b"c\n"), (4, b"b\n"), (2, b"a\n")]), (b"\n\n", [(2, b"\n"), (1, b"\n")]),
    (b"a\n" + LONG + b"\nc", [(len(LONG) + 3, LONG + b"\n"), (2, b"a\n")]),
    (LONG + b"\n", [(len(LONG) + 1, LONG + b"\n")]),
])
@pytest.mark.parametrize("block", [1, 2, 7, 1 << 16])
def test_lines_backwards(tmp_path, monkeypatch, content, lines, block):
    """Complete lines newest first with their end offsets, whatever the block size."""
    monkeypatch.setattr(jsonl_handler, "_BLOCK", block)
    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert list(lines_backwards(fd, len(content))) == lines
    finally:
        os.close(fd)


def test_newest_keys_stops_at_the_window(tmp_path):
    """The newest `records` keys, oldest first, and where to resume reading forwards."""
    path = tmp_path / "f"
    path.write_bytes(b"".join(b'{"idempotency_key": "k%d"}\n' % i for i in range(10)) + b'{"idem')
    fd = os.open(path, os.O_RDONLY)
    try:
        keys, resume_at = newest_keys(fd, path.stat().st_size, 3)
    finally:
        os.close(fd)
    assert keys == ["k7", "k8", "k9"] and resume_at == path.stat().st_size - len(b'{"idem')


def test_key_of_reads_our_lines_and_skips_foreign_ones():
    """Our records give their key from the line's head; foreign or damaged lines give None."""
    payload = make_payload(1, account='we"ird\\name@x')
    assert key_of(payload.to_json().encode() + b"\n") == payload.idempotency_key
    assert key_of(b'{"idempotency_key": "k", "other": 1}\n') == "k"
    assert key_of(b"not json\n") is None and key_of(b'{"idempotency_key": 5}\n') is None
