"""The project's exception tree: one root, one sub-root per boundary, and control-flow types."""

from __future__ import annotations


class IngestionError(Exception):
    """Root of every error this project raises on purpose."""


class SettingsError(IngestionError):
    """A setting is missing or invalid; the message names it and says what is expected."""


class AuthError(IngestionError):
    """Credentials were refused or cannot be obtained; a person has to act."""


class TokenRefreshError(AuthError):
    """The OAuth2 token endpoint refused to refresh the access token."""


class CredentialsRejectedError(TokenRefreshError):
    """Google refused the refresh token (invalid_grant: revoked, or expired after 7 days for an
    app in Testing): the mailbox waits in the `credentials` state until a person re-authorises."""


class TokenEndpointError(IngestionError):
    """The OAuth2 token endpoint could not be reached; retrying may help."""


class ImapError(IngestionError):
    """Root of IMAP-side failures."""


class ImapConnectionError(ImapError):
    """The IMAP connection failed, dropped or timed out; reconnecting may help."""


class ImapConnectionClosedError(ImapConnectionError):
    """The server closed an idling connection (EOF, or BYE without a throttling code): the
    first reconnect goes at once, later ones back off."""


class ImapThrottledError(ImapConnectionError):
    """The server asked us to slow down ([THROTTLED], [OVERQUOTA], too many connections)."""


class MailboxNotFoundError(SettingsError):
    """IMAP_MAILBOX names a folder the server does not have; the message lists close ones."""


class FolderGoneError(ImapError):
    """The followed folder, which existed before, is missing now (deleted, renamed, being
    re-created by a client): a passing condition, retried with backoff (issue 18 §8)."""


class TlsVerificationError(SettingsError):
    """The server's certificate failed verification (wrong host, untrusted CA: IMAP_CA_FILE)."""


class TransportMismatchError(SettingsError):
    """IMAP_SSL does not match the port: TLS to a plaintext port, or plaintext to a TLS one."""


class RedisAuthError(AuthError):
    """Redis refused the password or user in REDIS_URL / REDIS_PASSWORD."""


class RedisPermissionError(SettingsError):
    """The Redis ACL user lacks a command or key the process needs."""


class WaitInterrupted(ImapConnectionError):
    """A wait inside a sync step (the Gmail download budget) ended because the producer is
    stopping: nothing of the step was written, it runs again after the restart."""


class ImapProtocolError(ImapError):
    """The server answered a command with NO/BAD in a way reconnecting will not fix."""


class ParseWorkerError(IngestionError):
    """The helper process that builds payloads keeps ending between messages; the pass is retried.
    (One that ends over a message costs that message a degraded payload, producer/build_site.py.)"""


class ShutdownCutOff(IngestionError):
    """A shutdown's wait ran out while a batch was being built: the batch is dropped unwritten
    (the position did not move; the next owner fetches it again)."""


class StateError(IngestionError):
    """Root of Redis/state failures."""


class LeaseLostError(StateError):
    """This producer no longer holds the mailbox's lease (it expired while the process was
    paused, or another producer took it over): the write was refused, the mailbox is given up."""


class RedisUnavailableError(StateError):
    """Redis cannot be reached or is loading; waiting and retrying may help."""


class RedisTlsError(AuthError):
    """Redis's TLS certificate is not trusted (or Redis refused ours); a person has to act."""


class WorkerError(IngestionError):
    """Root of worker-side failures."""


class PermanentError(WorkerError):
    """Raised by a handler when retrying cannot help: the message goes straight to the DLQ."""


class RetryLater(WorkerError):
    """Raised by a handler to ask for a retry with backoff (any other exception does too)."""


class HandlerTimeoutError(WorkerError):
    """A handler call ran past HANDLER_TIMEOUT_SECONDS: the message fails with reason timeout."""
