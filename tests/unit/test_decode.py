"""Header and charset decoding: table-driven cases plus properties (never raises)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from email_ingestion.mail.decode import decode_addresses, decode_bytes, decode_header_value, normalize_charset


@pytest.mark.parametrize(("raw", "expected"), [
    ("plain subject", "plain subject"),
    ("=?utf-8?q?h=C3=A9llo?=", "héllo"),
    ("=?UTF-8?B?w6ljb2xl?=", "école"),
    ("Hello =?utf-8?q?W=C3=B6rld?= and =?iso-8859-1?q?caf=E9?=", "Hello Wörld and café"),
    ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # RFC 2047 §6.2: whitespace between words is dropped
    ("=?utf-8?q?folded?=\r\n =?utf-8?q?_line?=", "folded line"),
    ("=?gb2312?b?1tDOxA==?=", "中文"),
    ("=?ks_c_5601-1987?b?x9GxuQ==?=", "한국"),
    ("=?x-unknown?q?caf=C3=A9?=", "café"),
    ("Gr\udcfc\udcdfe", "Grüße"),  # raw 8-bit Latin-1 as compat32 keeps it
    ("\udce6\udc97\udca5\udce6\udc9c\udcac", "日本"),  # raw 8-bit UTF-8
    ("nul\x00byte", "nul\ufffdbyte"),
])
def test_decode_header_value(raw, expected):
    """RFC 2047 words, folding, CJK and unknown charsets, raw 8-bit and NULs decode to clean text."""
    assert decode_header_value(raw) == expected


@pytest.mark.parametrize(("data", "charset", "expected", "defect"), [
    (b"caf\xc3\xa9", "utf-8", "café", None),
    (b"caf\xe9", "iso-8859-1", "café", None),
    (b"caf\xc3\xa9", "us-ascii", "café", None),  # mislabelled UTF-8
    (b"caf\xe9", "x-no-such", "café", "unknown charset 'x-no-such'"),
    (b"\x93quoted\x94", None, "\u201cquoted\u201d", None),
    (b"\xff\xfe\xfa", "utf-8", "ÿþú", None),
])
def test_decode_bytes_fallbacks(data, charset, expected, defect):
    """Mislabelled, unknown or missing charsets fall back to a readable decoding; unknown is a defect."""
    defects: list[str] = []
    assert decode_bytes(data, charset, defects) == expected
    assert (defect in defects) if defect else True


def test_normalize_charset_aliases():
    """Quoted and alias charset names map to Python codec names; unknown-8bit maps to None."""
    assert normalize_charset('"UTF8"') == "utf-8"
    assert normalize_charset("unknown-8bit") is None
    assert normalize_charset("windows-874") == "cp874"


@pytest.mark.parametrize(("raw", "expected"), [
    ("Bob <bob@x.org>", [("Bob", "bob@x.org")]),
    ("=?utf-8?q?J=C3=BCrgen?= <j@x.org>, c@d.e", [("Jürgen", "j@x.org"), ("", "c@d.e")]),
    ('"Last, First" <lf@x.org>', [("Last, First", "lf@x.org")]),
    ("", []),
])
def test_decode_addresses(raw, expected):
    """Address headers give (name, address) pairs, encoded and quoted names too; empty gives []."""
    assert decode_addresses(raw) == expected


@given(st.binary(max_size=300), st.one_of(st.none(), st.sampled_from(
    ["utf-8", "iso-8859-1", "us-ascii", "shift_jis", "koi8-r", "bogus", "utf-16", "gb2312", ""])))
def test_decode_bytes_never_raises(data, charset):
    """decode_bytes returns a str for any bytes and any charset label, never raising."""
    assert isinstance(decode_bytes(data, charset, []), str)


@given(st.text(max_size=200))
def test_decode_header_value_never_raises(text):
    """decode_header_value returns a str for any text, never raising."""
    assert isinstance(decode_header_value(text, []), str)


@given(st.text(max_size=200))
def test_decode_addresses_never_raises(text):
    """decode_addresses returns a list for any text, never raising."""
    assert isinstance(decode_addresses(text, []), list)


_atoms = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12)
_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC XYZ.'-", max_size=20)


@example(name="A  A", local="0", domain="0", shape="{name} <{addr}>")  # runs of spaces in an unquoted name
@given(_names, _atoms, _atoms, st.sampled_from(['{name} <{addr}>', '"{name}" <{addr}>', '{addr}', ' <{addr}> ']))
def test_fast_address_path_agrees_with_the_stdlib_parser(name, local, domain, shape):
    """The regex fast path gives what the general path (email.utils.getaddresses, then the
    same name decoding) gives."""
    import email.utils
    text = shape.format(name=name, addr=f"{local}@{domain}.org")
    expected = [(decode_header_value(n) or "", a) for n, a in email.utils.getaddresses([text]) if n or a]
    assert decode_addresses(text) == expected


@pytest.mark.parametrize(("header", "expected"), [
    ("root (Cron Daemon)", [("Cron Daemon", "root")]),
    ("Mail Delivery System <MAILER-DAEMON>", [("Mail Delivery System", "MAILER-DAEMON")]),
    ("John Smith", []), ("=?utf-8?q?x?=", []), ("@x.org", []),
])
def test_a_local_part_written_explicitly_is_an_address_and_a_bare_word_is_not(header, expected):
    """`<MAILER-DAEMON>` and `root (comment)` are what real senders write; a bare word is no address."""
    assert decode_addresses(header, []) == expected
