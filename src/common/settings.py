"""Typed settings read from the environment and `.env`, only when `load_settings` is called.

Each group reads its own prefix (IMAP_, GOOGLE_, REDIS_, WORKER_, ...); the producer's
top-level knobs (POLL_INTERVAL_SECONDS, BATCH_SIZE, INITIAL_SYNC) carry no prefix, as the
user's documentation names them. CLI flags override by passing values to `load_settings`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from src.common.errors import SettingsError


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore", frozen=True)


class ImapSettings(BaseSettings):
    model_config = _config("IMAP_")

    host: str = "imap.gmail.com"
    port: int | None = Field(default=None, ge=1, le=65535, description="993 with IMAP_SSL, else 143")
    user: str = Field(default="", description="the account, e.g. you@gmail.com")
    mailbox: str = "INBOX"
    auth_method: Literal["oauth2", "password"] = "oauth2"
    password: SecretStr | None = Field(default=None, description="password or app password")
    ssl: bool = Field(default=True, description="implicit TLS (port 993)")
    starttls: bool = Field(default=False, description="upgrade a plain connection with STARTTLS")
    allow_plaintext: bool = Field(default=False, description="allow no TLS to a non-loopback host")
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the server with")
    timeout_seconds: float = Field(default=30.0, gt=0, description="connect and read timeout")
    idle: bool = Field(default=True, description="use IDLE when the server offers it")
    idle_refresh_seconds: float = Field(default=1500.0, gt=0, lt=1740, description="re-issue IDLE before 29 min")

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.ssl else 143)

    @property
    def uses_tls(self) -> bool:
        return self.ssl or self.starttls


class GoogleSettings(BaseSettings):
    model_config = _config("GOOGLE_")

    client_id: str = ""
    client_secret: SecretStr | None = None
    token_file: Path = Path("token.json")
    token_uri: str = "https://oauth2.googleapis.com/token"
    refresh_margin_seconds: float = Field(default=300.0, ge=0, description="refresh this long before expiry")


class RedisSettings(BaseSettings):
    model_config = _config("REDIS_")

    url: str | None = Field(default=None, description="redis://[:password@]host:port/db; overrides host/port/db")
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    db: int = Field(default=0, ge=0)
    stream_name: str = Field(default="email_ingestion_stream", min_length=1)
    max_stream_length: int = Field(default=100_000, ge=1, description="unacknowledged entries before backpressure")
    socket_timeout_seconds: float = Field(default=10.0, gt=0)


class LogSettings(BaseSettings):
    model_config = _config("LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"

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
    large_message_bytes: int = Field(default=1_000_000, ge=1024, description="above this, fetch text parts only")
    preview_fetch_bytes: int = Field(default=16_384, ge=1024, description="bytes of each text part fetched then")
    progress_interval_seconds: float = Field(default=10.0, gt=0)
    parallel_parse: bool = Field(default=True, description="parse in a helper process during long syncs")
    producer_metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 disables /metrics")

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


class WorkerSettings(BaseSettings):
    model_config = _config("WORKER_")

    group: str = "email_processor_group"
    batch_size: int = Field(default=200, ge=1, le=10_000, description="entries per XREADGROUP (throughput-tuned)")
    block_timeout_ms: int = Field(default=5000, ge=0)
    handler: str = "log"
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0)
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 disables /metrics")


class RetrySettings(BaseSettings):
    model_config = _config("")

    max_retries: int = Field(default=3, ge=0)
    max_deliveries: int = Field(default=5, ge=1, description="deliveries without ack before the DLQ")
    retry_base_seconds: float = Field(default=10.0, gt=0)
    retry_factor: float = Field(default=2.0, ge=1)
    retry_cap_seconds: float = Field(default=600.0, gt=0)
    idempotency_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    lease_ms: int = Field(default=60_000, ge=100, description="idempotency lease, renewed while handling")
    claim_min_idle_ms: int = Field(default=60_000, ge=1)
    claim_hard_limit_ms: int = Field(default=3_600_000, ge=1, description="claim even with a heartbeat")
    heartbeat_ttl_ms: int = Field(default=15_000, ge=100)
    dlq_stream_name: str = "email_ingestion_dlq"
    webhook_secret: SecretStr | None = None
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)


_GROUPS: dict[str, tuple[type[BaseSettings], str]] = {
    "imap": (ImapSettings, "IMAP_"),
    "google": (GoogleSettings, "GOOGLE_"),
    "redis": (RedisSettings, "REDIS_"),
    "log": (LogSettings, "LOG_"),
    "producer": (ProducerSettings, ""),
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
    worker: WorkerSettings
    retry: RetrySettings

    def secrets(self) -> list[str]:
        """Every configured secret value, for the log redactor."""
        values = [self.imap.password, self.google.client_secret, self.redis.password,
                  self.retry.webhook_secret]
        found = [v.get_secret_value() for v in values if v is not None]
        if self.redis.url and "@" in self.redis.url:
            found.append(self.redis.url.split("@", 1)[0].rsplit(":", 1)[-1])
        return [s for s in found if len(s) >= 4]


def load_settings(overrides: dict[str, dict[str, Any]] | None = None,
                  env_file: str | Path | None = ".env") -> Settings:
    """Read every group from the environment and `env_file`; raise SettingsError naming the
    first bad variable."""
    overrides = overrides or {}
    groups: dict[str, Any] = {}
    for name, (cls, prefix) in _GROUPS.items():
        values = {k: v for k, v in overrides.get(name, {}).items() if v is not None}
        try:
            groups[name] = cls(_env_file=env_file, **values)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise SettingsError(_describe(exc, prefix)) from None
    return Settings(**groups)


def _describe(exc: ValidationError, prefix: str) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else "?"
    given = error.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {str(given)[:60]!r})"
    return f"invalid setting {prefix}{field.upper()}: {error['msg']}{shown}"


def require_producer_settings(settings: Settings) -> None:
    """Cross-field checks the producer needs; each failure names the variable to set."""
    imap = settings.imap
    if not imap.user:
        raise SettingsError("missing setting IMAP_USER: the account to read, e.g. you@gmail.com")
    if imap.auth_method == "password" and imap.password is None:
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
