"""Email ingestion: IMAP/Gmail mailboxes to a Redis Stream, and workers that consume it."""

__version__ = "0.1.0"
