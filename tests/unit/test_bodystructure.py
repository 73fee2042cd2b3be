"""BODYSTRUCTURE walking, on structures as imapclient returns them from Dovecot."""

from __future__ import annotations

from email_ingestion.imap.bodystructure import walk

# Captured from Dovecot 2.3 for multipart/mixed(alternative(plain, html), pdf attachment).
NESTED = ([([(b"text", b"plain", (b"charset", b"utf-8"), None, None, b"base64", 22, 1, None, None, None, None),
             (b"text", b"html", (b"charset", b"utf-8"), None, None, b"base64", 26, 1, None, None, None, None)],
            b"alternative", (b"boundary", b"=="), None, None, None),
           (b"application", b"octet-stream", (b"Name*", b"utf-8''r%C3%A9sum%C3%A9.pdf"), None, None, b"base64", 4106,
            None, (b"attachment", (b"filename*", b"utf-8''r%C3%A9sum%C3%A9.pdf")), None, None)],
          b"mixed", (b"boundary", b"=="), None, None, None)
SINGLE = (b"text", b"plain", (b"charset", b"utf-8"), None, None, b"base64", 18, 1, None, None, None, None)


def test_nested_sections_and_kinds():
    """Nested parts get IMAP section numbers, kinds, charset, RFC 2231 filename and an estimated size."""
    parts = list(walk(NESTED))
    assert [(p.section, p.content_type, p.is_body_text) for p in parts] == [
        ("1.1", "text/plain", True), ("1.2", "text/html", True), ("2", "application/octet-stream", False)]
    assert parts[0].charset == "utf-8" and parts[0].encoding == "base64"
    assert parts[2].filename == "résumé.pdf"
    assert parts[2].attachment().size == 4106 * 57 // 78


def test_single_part_message_is_section_1():
    """A single-part message's only part is section 1 and counts as body text."""
    [part] = walk(SINGLE)
    assert part.section == "1" and part.is_body_text


def test_quoted_name_parameter():
    """A name parameter containing double quotes is kept verbatim as the filename."""
    structure = (b"image", b"png", (b"name", b'a "quoted" name.png'), None, None, b"base64", 100, None, None, None, None)
    assert next(walk(structure)).filename == 'a "quoted" name.png'
