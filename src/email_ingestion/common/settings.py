"""Typed settings read from the environment and `.env`, only when `load_settings` is called.

Each group reads its own prefix (IMAP_, GOOGLE_, REDIS_, WORKER_, ...); the producer's
top-level knobs (POLL_INTERVAL_SECONDS, BATCH_SIZE, INITIAL_SYNC) carry no prefix, as the
user's documentation names them. CLI flags override by passing values to `load_settings`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from email_ingestion.common.env_files import check_env_file, file_variables, resolve_env_file, unknown_variables
from email_ingestion.common.errors import SettingsError
from email_ingestion.common.keys import hash_tag


def _config(prefix: str) -> SettingsConfigDict:
    # No infinite or NaN durations: they pass `gt=0` and then overflow timers at runtime.
    # An empty value means unset: `IMAP_PORT=` (an uncommented line of .env.example) is the
    # default, not an invalid number.
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True, allow_inf_nan=False,
                              env_ignore_empty=True)


class ImapSettings(BaseSettings):
    model_config = _config("IMAP_")

    host: str = Field(default="imap.gmail.com", description="IMAP server")
    port: int | None = Field(default=None, ge=1, le=65535, description="993 with IMAP_SSL, else 143")
    user: str = Field(default="", description="the account, e.g. you@gmail.com")
    mailbox: str = Field(default="INBOX", description="the mailbox (folder) to follow")
    auth_method: Literal["oauth2", "password"] = Field(default="oauth2", description="oauth2 (XOAUTH2) or password (LOGIN)")
    password: SecretStr | None = Field(default=None, description="password or app password")
    ssl: bool = Field(default=True, description="implicit TLS (port 993)")
    starttls: bool = Field(default=False, description="upgrade a plain connection with STARTTLS")
    allow_plaintext: bool = Field(default=False, description="allow no TLS to a non-loopback host")
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the server with")
    timeout_seconds: float = Field(default=30.0, gt=0, description="connect and read timeout")
    idle: bool = Field(default=True, description="use IDLE when the server offers it")
    idle_refresh_seconds: float = Field(default=1500.0, gt=0, lt=1740, description="re-issue IDLE before 29 min")
    max_connections: int = Field(default=4, ge=1, description="IMAP connections one producer opens per account "
                                                                "(one per mailbox; Gmail allows 15 in all)")

    @field_validator("mailbox", "user")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        # Both go into IMAP command lines: CR/LF would end the command early.
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain control characters (CR, LF, NUL, ...)")
        return value

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.ssl else 143)

    @property
    def uses_tls(self) -> bool:
        return self.ssl or self.starttls


class GoogleSettings(BaseSettings):
    model_config = _config("GOOGLE_")

    client_id: str = Field(default="", description="OAuth client id (Google Cloud console)")
    client_secret: SecretStr | None = Field(default=None, description="OAuth client secret")
    token_file: Path = Field(default=Path("token.json"), description="stored tokens (mode 0600), written by --auth-setup")
    token_uri: str = Field(default="https://oauth2.googleapis.com/token", description="token endpoint")
    refresh_margin_seconds: float = Field(default=300.0, ge=0, description="refresh this long before expiry")


class RedisSettings(BaseSettings):
    model_config = _config("REDIS_")

    url: str | None = Field(default=None, description="redis://[:password@]host:port/db; overrides host/port/db")
    host: str = Field(default="127.0.0.1", description="used when REDIS_URL is unset")
    port: int = Field(default=6379, ge=1, le=65535, description="used when REDIS_URL is unset")
    username: str | None = Field(default=None, description="ACL user")
    password: SecretStr | None = Field(default=None, description="ACL password")
    db: int = Field(default=0, ge=0, description="database number")
    stream_name: str = Field(default="email_ingestion_stream", min_length=1, description="the stream (and cluster hash tag)")
    max_stream_length: int = Field(default=100_000, ge=1, description="unacknowledged entries before backpressure")
    socket_timeout_seconds: float = Field(default=10.0, gt=0, description="Redis connect/read timeout")
    sentinels: str | None = Field(default=None, description="host:port,host:port of Sentinels; find the master there")
    sentinel_master: str = Field(default="mymaster", min_length=1, description="the master's name in Sentinel")
    sentinel_username: str | None = Field(default=None, description="ACL user on the Sentinels")
    sentinel_password: SecretStr | None = Field(default=None, description="password of the Sentinels")
    cluster: bool = Field(default=False, description="Redis Cluster: REDIS_URL names any node")
    tls: bool = Field(default=False, description="TLS to Redis and Sentinels (implied by rediss://)")
    ca_file: Path | None = Field(default=None, description="CA bundle to verify Redis's certificate with")
    cert_file: Path | None = Field(default=None, description="client certificate (tls-auth-clients yes)")
    key_file: Path | None = Field(default=None, description="client certificate's private key")
    wait_replicas: int = Field(default=0, ge=0, description="WAIT for N replicas after each emit and settlement")
    wait_timeout_ms: int = Field(default=1000, ge=1, description="WAIT timeout; fewer replicas is a retryable error")

    @field_validator("stream_name")
    @classmethod
    def _check_stream_name(cls, value: str) -> str:
        hash_tag(value)
        return value

    @field_validator("sentinels")
    @classmethod
    def _check_sentinels(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            sentinel_addresses(value)
            return value
        return None

    @model_validator(mode="after")
    def _check_topology(self) -> RedisSettings:
        if self.sentinels and self.cluster:
            raise ValueError("REDIS_SENTINELS and REDIS_CLUSTER exclude each other: choose one")
        if self.cluster and (self.db != 0 or re.search(r"://[^/]*/0*[1-9]", self.url or "")):
            raise ValueError("REDIS_DB: Redis Cluster has database 0 only")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"REDIS_{name.upper()}: {path} is not a readable file")
        if self.wait_replicas and self.wait_timeout_ms >= self.socket_timeout_seconds * 1000:
            raise ValueError("REDIS_WAIT_TIMEOUT_MS: must be below REDIS_SOCKET_TIMEOUT_SECONDS, or the "
                             "socket times out before WAIT answers")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("REDIS_CERT_FILE and REDIS_KEY_FILE go together: set both or neither")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.tls or (self.url or "").startswith("rediss://")


def sentinel_addresses(text: str) -> list[tuple[str, int]]:
    """`host:port,host:port` as pairs; a ValueError names the part that is not one."""
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port,host:port,... ({part!r} is not host:port)")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


class LogSettings(BaseSettings):
    model_config = _config("LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="DEBUG | INFO | WARNING | ERROR")
    format: Literal["json", "text"] = Field(default="json", description="json lines, or text for terminals")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


InitialSync = str  # "all" | "new" | "since:YYYY-MM-DD", checked below


class ProducerSettings(BaseSettings):
    model_config = _config("")

    poll_interval_seconds: float = Field(default=60.0, gt=0, description="full poll even while idling")
    batch_size: int = Field(default=500, ge=1, le=5000, description="UIDs per UID FETCH")
    initial_sync: InitialSync = Field(default="all", description="all | new | since:YYYY-MM-DD")
    initial_sync_order: Literal["oldest", "newest"] = Field(default="oldest", description="first sync: oldest "
                                                                                          "mail first, or newest")
    large_message_bytes: int = Field(default=1_000_000, ge=1024, description="above this, fetch text parts only")
    preview_fetch_bytes: int = Field(default=16_384, ge=1024, description="bytes of each text part fetched then")
    fingerprints_per_mailbox: int = Field(default=5_000_000, ge=4096,
                                          description="fingerprints kept per mailbox to recognise mail after a "
                                          "UIDVALIDITY change (~12 bytes each); the oldest go beyond it")
    progress_interval_seconds: float = Field(default=10.0, gt=0, description="progress line interval in long syncs")
    parallel_parse: bool = Field(default=True, description="ignored since issue 18: payloads are always built in a "
                                                          "helper process, which enforces the per-message CPU budget")
    producer_metrics_port: int = Field(default=9090, ge=0, le=65535,
                                       description="port of /metrics, /health, /ready, /status; 0 disables")
    mailboxes_file: Path | None = Field(default=None, description="TOML file with one [[mailbox]] table per "
                                                                  "mailbox; unset: the IMAP_ settings, one mailbox")
    producer_lease_ms: int = Field(default=30_000, ge=300, description="mailbox ownership lease, renewed at a third")
    producer_id: str = Field(default="", description="this producer among several; empty: the host name")
    gmail_label_events: bool = Field(default=False, description="Gmail: a label added to or removed from an "
                                                                "emitted message becomes a labels_changed event")
    gmail_daily_download_mb: float = Field(default=2000.0, gt=0, description="Gmail: body downloads per account in "
                                                                             "a rolling 24 h (MB of 10^6 bytes); "
                                                                             "Gmail allows about 2500")

    @field_validator("initial_sync")
    @classmethod
    def _check_initial_sync(cls, value: str) -> str:
        if value in ("all", "new"):
            return value
        match = re.fullmatch(r"since:(\d{4}-\d{2}-\d{2})", value)
        if not match:
            raise ValueError("expected all, new or since:YYYY-MM-DD")
        dt.date.fromisoformat(match.group(1))
        return value

    @property
    def since_date(self) -> dt.date | None:
        if self.initial_sync.startswith("since:"):
            return dt.date.fromisoformat(self.initial_sync[6:])
        return None


class HealthSettings(BaseSettings):
    model_config = _config("HEALTH_")

    host: str = Field(default="127.0.0.1", description="address of /health, /ready, /status, /metrics")
    stall_seconds: float = Field(default=360.0, gt=0,
                                 description="/health fails when the loop is quiet longer (above HANDLER_TIMEOUT_SECONDS)")
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open a breaker")
    breaker_reset_seconds: float = Field(default=30.0, gt=0, description="open breaker: wait before a trial")


class WorkerSettings(BaseSettings):
    model_config = _config("WORKER_")

    group: str = Field(default="email_processor_group", description="consumer group")
    streams: str | None = Field(default=None, description="comma-separated streams to read, each fairly "
                                                          "(one loop each); unset: REDIS_STREAM_NAME")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="entries per XREADGROUP (throughput-tuned)")
    block_timeout_ms: int = Field(default=5000, ge=0, description="XREADGROUP BLOCK")
    handler: str = Field(default="log", description="log | noop | jsonl:PATH | webhook:URL | module:callable")
    handler_path: str | None = Field(default=None, description="directories searched for module:callable handlers "
                                                               "before the installed packages, ':'-separated")
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0, description="SIGTERM: time to finish messages in hand")
    settle_interval_ms: int = Field(default=1000, ge=10,
                                    description="a batch in progress settles what it handled at least this often")
    settle_max_messages: int = Field(default=500, ge=1,
                                     description="... or after this many handled messages, whichever comes first")
    metrics_port: int = Field(default=0, ge=0, le=65535,
                              description="port of /metrics, /health, /ready, /status; 0 disables")

    @field_validator("streams")
    @classmethod
    def _check_streams(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return ",".join(split_streams(value))


def split_streams(text: str) -> list[str]:
    """`a,b` as stream names; a ValueError names an empty, repeated or untaggable one."""
    names = [part.strip() for part in text.split(",")]
    for index, name in enumerate(names):
        if not name:
            raise ValueError(f"expected stream,stream,... (name {index + 1} is empty)")
        if name in names[:index]:
            raise ValueError(f"stream {name!r} is named twice")
        hash_tag(name)
    return names


class RetrySettings(BaseSettings):
    model_config = _config("")

    max_retries: int = Field(default=3, ge=0, description="retries after the first attempt, then DLQ")
    max_deliveries: int = Field(default=5, ge=1, description="deliveries without ack before the DLQ")
    retry_base_seconds: float = Field(default=10.0, gt=0, description="backoff base (full jitter)")
    retry_factor: float = Field(default=2.0, ge=1, description="backoff growth per retry")
    retry_cap_seconds: float = Field(default=600.0, gt=0, description="backoff ceiling")
    idempotency_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1, description="how long done markers live")
    lease_ms: int = Field(default=60_000, ge=100, description="idempotency lease, renewed while handling")
    claim_min_idle_ms: int = Field(default=60_000, ge=0, description="idle time before a dead consumer's message is claimed")
    claim_hard_limit_ms: int = Field(default=3_600_000, ge=1, description="claim even with a heartbeat")
    heartbeat_ttl_ms: int = Field(default=15_000, ge=100, description="consumer heartbeat key TTL")
    handler_timeout_seconds: float = Field(default=300.0, gt=0,
                                           description="a handler call running longer fails (timeout) and "
                                                       "the worker exits for its supervisor to restart it")
    dlq_stream_name: str = Field(default="email_ingestion_dlq", description="DLQ stream (gets the stream's hash tag)")
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for webhook signatures")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="bound on a whole webhook call, connect "
                                                                          "to the end of the answer")
    webhook_ca_file: Path | None = Field(default=None, description="CA bundle to verify the webhook's certificate "
                                                                   "with (default: certifi's)")


_GROUPS: dict[str, tuple[type[BaseSettings], str]] = {
    "imap": (ImapSettings, "IMAP_"),
    "google": (GoogleSettings, "GOOGLE_"),
    "redis": (RedisSettings, "REDIS_"),
    "log": (LogSettings, "LOG_"),
    "producer": (ProducerSettings, ""),
    "health": (HealthSettings, "HEALTH_"),
    "worker": (WorkerSettings, "WORKER_"),
    "retry": (RetrySettings, ""),
}


@dataclass(frozen=True)
class Settings:
    imap: ImapSettings
    google: GoogleSettings
    redis: RedisSettings
    log: LogSettings
    producer: ProducerSettings
    health: HealthSettings
    worker: WorkerSettings
    retry: RetrySettings
    # Variables with a project prefix that no setting reads (typos), with the nearest name.
    warnings: tuple[str, ...] = ()
    env_file: Path | None = None  # the file the values were read from, if any

    def worker_streams(self) -> tuple[str, ...]:
        """The streams a worker reads: WORKER_STREAMS (or --stream, repeated), else REDIS_STREAM_NAME."""
        if self.worker.streams is None:
            return (self.redis.stream_name,)
        return tuple(self.worker.streams.split(","))

    def handler_path(self) -> tuple[str, ...]:
        """The directories of WORKER_HANDLER_PATH (or --handler-path, repeated), in search order."""
        return tuple(part for part in (self.worker.handler_path or "").split(os.pathsep) if part.strip())

    def secrets(self) -> list[str]:
        """Every configured secret value, for the log redactor."""
        values = [self.imap.password, self.google.client_secret, self.redis.password,
                  self.redis.sentinel_password, self.retry.webhook_secret]
        found = [v.get_secret_value() for v in values if v is not None]
        if self.redis.url and "@" in self.redis.url:
            # The userinfo ends at the last "@" of the URL: passwords may hold "@", "/", "#", "?".
            userinfo = self.redis.url.partition("://")[2].rpartition("@")[0]
            found.append(userinfo.partition(":")[2])
        return [s for s in found if len(s) >= 4]


def load_settings(overrides: dict[str, dict[str, Any]] | None = None,
                  env_file: str | Path | None = ".env") -> Settings:
    """Read every group from the environment and the env file (the default name is searched
    for, see common/env_files.py; None reads none); raise SettingsError naming the first bad
    variable."""
    path = resolve_env_file(env_file)
    check_env_file(path)
    overrides = overrides or {}
    link_warnings = _ignore_service_links(overrides, file_variables(path))
    groups: dict[str, Any] = {}
    for name, (cls, prefix) in _GROUPS.items():
        values = {k: v for k, v in overrides.get(name, {}).items() if v is not None}
        try:
            groups[name] = cls(_env_file=path, **values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, prefix)) from None
    known = [row[0] for row in env_reference()]
    warnings = [*link_warnings, *unknown_variables(os.environ, known, where="the environment"),
                *unknown_variables(file_variables(path), known, where=str(path), every_name=True)]
    return Settings(**groups, warnings=tuple(warnings), env_file=path)


# Kubernetes (and Docker links) set <SERVICE>_PORT=tcp://10.0.0.1:6379 for a Service named
# "redis" or "imap": not a port, and not meant for us. Ignored with a warning, so a pod next
# to such a Service starts instead of failing on a setting nobody wrote.
_SERVICE_LINKS = (("REDIS_PORT", "redis", "port"),)


def _ignore_service_links(overrides: dict[str, dict[str, Any]], in_file: list[str]) -> list[str]:
    warnings = []
    for variable, group, field in _SERVICE_LINKS:
        value = os.environ.get(variable, "")
        given = overrides.get(group, {}).get(field) is not None
        if re.match(r"^(tcp|udp)://", value) and not given and variable not in in_file:
            overrides.setdefault(group, {})[field] = _GROUPS[group][0].model_fields[field].default
            warnings.append(f"{variable}={value} looks like a Kubernetes/Docker service link, not a port: ignored")
    return warnings


def log_warnings(settings: Settings, log: Any) -> None:
    """Report misspelt variables once the process's logging is set up."""
    for warning in settings.warnings:
        log.warning(warning)


def _describe(exc: ValidationError, prefix: str) -> str:
    error = exc.errors()[0]
    if not error["loc"]:  # a check across fields: its message names the variables
        return f"invalid setting {str(error['msg']).removeprefix('Value error, ')}"
    field = str(error["loc"][0])
    given = error.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {str(given)[:60]!r})"
    return f"invalid setting {prefix}{field.upper()}: {error['msg']}{shown}"


def require_producer_settings(settings: Settings) -> None:
    """Cross-field checks the producer needs; each failure names the variable to set."""
    imap = settings.imap
    if not imap.user:
        raise SettingsError("missing setting IMAP_USER: the account to read, e.g. you@gmail.com")
    if imap.auth_method == "password" and (imap.password is None or not imap.password.get_secret_value()):
        raise SettingsError("missing setting IMAP_PASSWORD: required when IMAP_AUTH_METHOD=password")
    if imap.ssl and imap.starttls:
        raise SettingsError("invalid setting IMAP_STARTTLS: choose IMAP_SSL=true or IMAP_STARTTLS=true, not both")
    if not imap.uses_tls and not imap.allow_plaintext and not _is_loopback(imap.host):
        raise SettingsError(
            f"invalid setting IMAP_SSL: plaintext IMAP to {imap.host} would send credentials "
            "unencrypted; enable IMAP_SSL or IMAP_STARTTLS, or set IMAP_ALLOW_PLAINTEXT=true")
    if imap.ca_file is not None and not imap.ca_file.is_file():
        raise SettingsError(f"invalid setting IMAP_CA_FILE: {imap.ca_file} is not a readable file")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_fields() -> list[tuple[str, str, str]]:
    """(group, field, VARIABLE) for every setting, in the reference's order."""
    return [(group, name, f"{prefix}{name}".upper())
            for group, (cls, prefix) in _GROUPS.items() for name in cls.model_fields]


def env_reference() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for the README and .env.example."""
    rows = []
    for cls, prefix in _GROUPS.values():
        for name, field in cls.model_fields.items():
            default = field.default
            shown = "" if default is None else str(default.get_secret_value() if isinstance(default, SecretStr)
                                                   else default)
            rows.append((f"{prefix}{name}".upper(), shown, field.description or ""))
    return rows


_SECTIONS = {"IMAP_": "IMAP mailbox", "GOOGLE_": "Gmail OAuth2 (IMAP_AUTH_METHOD=oauth2)", "REDIS_": "Redis",
             "LOG_": "Logging", "HEALTH_": "Health, metrics, circuit breakers", "WORKER_": "Worker"}


def markdown_table() -> str:
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for variable, default, meaning in env_reference():
        shown = f"`{default}`" if default else "(unset)"
        rows.append(f"| `{variable}` | {shown} | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def env_example() -> str:
    lines = ["# Copy to .env and fill in. The value shown is the default; only IMAP_USER is required.",
             "# CLI flags override these (python producer.py --help, python worker.py --help)."]
    section = None
    for variable, default, meaning in env_reference():
        title = next((t for p, t in _SECTIONS.items() if variable.startswith(p)), None)
        if title is None:
            title = "Producer" if variable in ProducerSettings.model_fields.keys() | {
                f.upper() for f in ProducerSettings.model_fields} else "Worker retries, DLQ, recovery"
        if title != section:
            lines += ["", f"# --- {title} ---"]
            section = title
        if variable == "IMAP_USER":
            lines += [f"# {meaning} (required)", "IMAP_USER=you@gmail.com"]
        else:
            lines += [f"# {meaning}", f"# {variable}={default}"]
    return "\n".join(lines) + "\n"


TABLE_START, TABLE_END = "<!-- settings table: generated, python -m email_ingestion.common.settings --write -->", \
    "<!-- end of settings table -->"


def write_reference(root: Path) -> None:
    """Regenerate docs/configuration.md's table and .env.example from the settings classes."""
    doc = root / "docs" / "configuration.md"
    text = doc.read_text()
    head, _, rest = text.partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    doc.write_text(f"{head}{TABLE_START}\n{markdown_table()}\n{TABLE_END}{tail}")
    (root / ".env.example").write_text(env_example())


if __name__ == "__main__":
    import sys
    if "--write" in sys.argv:
        write_reference(Path(__file__).resolve().parents[3])
    else:
        print(env_example() if "--env-example" in sys.argv else markdown_table(), end="")
