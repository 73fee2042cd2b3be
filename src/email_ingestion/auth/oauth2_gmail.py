"""Gmail OAuth2: the token file, refreshing access tokens, XOAUTH2 login, and a small CLI.

    python -m email_ingestion.auth.oauth2_gmail --setup | --info | --refresh | --revoke

The token file holds the refresh token and is written with mode 0600. An access token is
refreshed `GOOGLE_REFRESH_MARGIN_SECONDS` before it expires, and again whenever the server
refuses it at a (re)connect. A refresh refused with `invalid_grant` means a person must
re-authorise; it is reported as exactly that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imapclient import IMAPClient

from email_ingestion.common.cli_args import add_version
from email_ingestion.common.errors import (
    AuthError,
    CredentialsRejectedError,
    IngestionError,
    SettingsError,
    TokenEndpointError,
    TokenRefreshError,
)
from email_ingestion.common.exits import EXIT_AUTH, EXIT_FAILED, EXIT_OK, EXIT_SETTINGS
from email_ingestion.common.settings import GoogleSettings, load_settings
from email_ingestion.common.text import iso_utc

if TYPE_CHECKING:
    from google.oauth2.credentials import Credentials

log = logging.getLogger(__name__)

# google-auth and requests are imported where used: they add ~0.3 s to every start, and a
# password-authenticated producer never needs them.

SCOPES = ["https://mail.google.com/"]
AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
REVOKE_URI = "https://oauth2.googleapis.com/revoke"
REAUTHORISE = "python producer.py --auth-setup"
ISSUED_AT = "refresh_token_issued_at"  # our field in the token file: when the refresh token was granted
TESTING_WARN_DAYS = 6.0  # refresh tokens of apps in "Testing" expire after 7 days


class TokenStore:
    """The stored Google credentials of one account; hands out fresh access tokens."""

    def __init__(self, *, settings: GoogleSettings, on_new_token: Callable[[str], None] = lambda _: None,
                 on_refresh_failed: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self._on_new_token = on_new_token
        self._on_refresh_failed = on_refresh_failed
        self._credentials: Credentials | None = None
        self.refresh_count = 0

    @property
    def path(self) -> Path:
        return self.settings.token_file

    def credentials(self) -> Credentials:
        if self._credentials is None:
            self._credentials = self._load()
            if self._credentials.token:
                self._on_new_token(self._credentials.token)
        return self._credentials

    def _load(self) -> Credentials:
        from google.oauth2.credentials import Credentials

        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise AuthError(f"no OAuth2 token file at {self.path}; create it with: {REAUTHORISE}") from None
        except (OSError, ValueError) as exc:
            raise AuthError(f"cannot read OAuth2 token file {self.path}: {exc}") from None
        if not data.get("refresh_token"):
            raise AuthError(f"token file {self.path} has no refresh_token; run: {REAUTHORISE}")
        secret = self.settings.client_secret
        expiry = data.get("expiry")
        return Credentials(  # type: ignore[no-untyped-call]
            token=data.get("token"),
            refresh_token=data["refresh_token"],
            token_uri=self.settings.token_uri or data.get("token_uri"),
            client_id=self.settings.client_id or data.get("client_id"),
            client_secret=secret.get_secret_value() if secret else data.get("client_secret"),
            scopes=data.get("scopes") or SCOPES,
            expiry=_parse_expiry(expiry) if expiry else None,
        )

    def access_token(self, now: dt.datetime | None = None) -> str:
        """A token valid for at least the refresh margin, refreshing it when needed."""
        creds = self.credentials()
        now = now or _utcnow()
        margin = dt.timedelta(seconds=self.settings.refresh_margin_seconds)
        if not creds.token or creds.expiry is None or creds.expiry - margin <= now:
            self.refresh()
        assert creds.token is not None
        return str(creds.token)

    def refresh(self) -> None:
        import google.auth.exceptions
        import google.auth.transport.requests

        creds = self.credentials()
        try:
            creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
        except google.auth.exceptions.RefreshError as exc:
            self._on_refresh_failed()
            raise _refresh_error(exc) from None
        except google.auth.exceptions.TransportError as exc:
            self._on_refresh_failed()
            raise TokenEndpointError(f"token endpoint {creds.token_uri} unreachable: {type(exc).__name__}") from None
        self.refresh_count += 1
        self._on_new_token(str(creds.token))
        save_credentials(creds, self.path)
        log.info("OAuth2 access token refreshed", extra={"expires_at": iso_utc(creds.expiry)})


def _refresh_error(exc: Exception) -> TokenRefreshError:
    text = str(exc)
    if "invalid_grant" in text:
        return CredentialsRejectedError(
            "OAuth2 refresh token rejected (invalid_grant): it was revoked, or expired "
            f"(apps left in Testing get 7-day refresh tokens). Re-authorise with: {REAUTHORISE}")
    reason = text.split(":", 1)[0][:120]
    return TokenRefreshError(f"OAuth2 token refresh failed: {reason}")


class XOAuth2Authenticator:
    """AUTHENTICATE XOAUTH2 with a fresh access token; on refusal, refresh and try once more."""

    def __init__(self, *, store: TokenStore) -> None:
        self.store = store

    def login(self, client: IMAPClient, user: str) -> None:
        auth_string = xoauth2_string(user, self.store.access_token())
        steps = iter([auth_string.encode()])
        # After an error the server sends a JSON challenge; answering it with an empty line
        # ends the exchange with a clean NO instead of resending the token.
        client.sasl_login("XOAUTH2", lambda _challenge: next(steps, b""))

    def on_rejected(self) -> bool:
        self.store.refresh()
        return True


def xoauth2_string(user: str, access_token: str) -> str:
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01"


def save_credentials(creds: Credentials, path: Path, issued_at: dt.datetime | None = None) -> None:
    """Write the token file atomically with mode 0600. `issued_at` (when the refresh token was
    granted) is written at setup and kept on every refresh, for the token's age."""
    data = json.loads(creds.to_json())  # type: ignore[no-untyped-call]
    data[ISSUED_AT] = iso_utc(issued_at) if issued_at else _stored_issued_at(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stored_issued_at(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text()).get(ISSUED_AT)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def token_age_days(path: Path, now: dt.datetime | None = None) -> float | None:
    """Days since the refresh token was granted; None for token files written before issue 20."""
    issued = _stored_issued_at(path)
    if issued is None:
        return None
    age = (now or dt.datetime.now(dt.UTC)) - dt.datetime.fromisoformat(issued.replace("Z", "+00:00"))
    return round(age.total_seconds() / 86400, 2)


def _parse_expiry(value: str) -> dt.datetime:
    # google-auth keeps expiry as a naive UTC datetime.
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def run_setup(settings: GoogleSettings, open_browser: bool = True) -> Path:
    """Run Google's installed-app flow in a browser and store the token file."""
    from google_auth_oauthlib.flow import InstalledAppFlow

    if not settings.client_id or settings.client_secret is None:
        raise AuthError("set GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET first (see docs/OAUTH2_SETUP.md)")
    config = {"installed": {
        "client_id": settings.client_id, "client_secret": settings.client_secret.get_secret_value(),
        "auth_uri": AUTH_URI, "token_uri": settings.token_uri, "redirect_uris": ["http://localhost"],
    }}
    flow = InstalledAppFlow.from_client_config(config, scopes=SCOPES)
    creds = flow.run_local_server(port=0, open_browser=open_browser, access_type="offline", prompt="consent")
    save_credentials(creds, settings.token_file, issued_at=dt.datetime.now(dt.UTC))
    return settings.token_file


def token_info(settings: GoogleSettings) -> dict[str, Any]:
    """What an operator needs to know about the token file, with no secret in it."""
    store = TokenStore(settings=settings)
    creds = store.credentials()
    return {
        "token_file": str(settings.token_file),
        "mode": oct(settings.token_file.stat().st_mode & 0o777),
        "has_refresh_token": bool(creds.refresh_token),
        "access_token_expiry": iso_utc(creds.expiry),
        "access_token_valid": bool(creds.valid),
        "scopes": list(creds.scopes or []),
        "client_id": creds.client_id,
        "token_uri": creds.token_uri,
        "refresh_token_age_days": token_age_days(settings.token_file),
    }


def revoke(settings: GoogleSettings, revoke_uri: str = REVOKE_URI) -> None:
    """Revoke the refresh token at Google and delete the token file.

    The token goes in the form body, as RFC 7009 §2.1 says: in the URL it would end up in
    proxy and server logs, and in the text of any request error (issue 9 §6)."""
    import requests

    store = TokenStore(settings=settings)
    creds = store.credentials()
    try:
        response = requests.post(revoke_uri, data={"token": creds.refresh_token}, timeout=15,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    except requests.RequestException as exc:
        # Not str(exc): requests quotes the request in it.
        raise TokenEndpointError(f"revoke endpoint {revoke_uri} unreachable: {type(exc).__name__}; "
                                 "the token file is kept, try again") from None
    if response.status_code not in (200, 400):
        raise TokenRefreshError(f"revoke failed with HTTP {response.status_code}")
    settings.token_file.unlink(missing_ok=True)


def _warn_about_age(age_days: float | None) -> None:
    if age_days is None:
        print("note: the token's age is unknown (written before this version); re-authorise to start "
              "tracking it", file=sys.stderr)
    elif age_days >= TESTING_WARN_DAYS:
        print(f"warning: this refresh token is {age_days:.1f} days old; a Google OAuth app left in "
              "\"Testing\" gets refresh tokens that expire after 7 days (invalid_grant): publish the app "
              f"or re-authorise before then ({REAUTHORISE}); see docs/OAUTH2_SETUP.md", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m email_ingestion.auth.oauth2_gmail", description=__doc__.split("\n\n")[0])
    add_version(parser)
    action = parser.add_mutually_exclusive_group(required=True)
    for flag, text in (("--setup", "authorise in a browser and write the token file"),
                       ("--info", "show the token file's state (no secrets)"),
                       ("--refresh", "refresh the access token now"),
                       ("--revoke", "revoke the refresh token at Google and delete the file")):
        action.add_argument(flag, action="store_true", help=text)
    parser.add_argument("--token-file", type=Path, help="default: GOOGLE_TOKEN_FILE")
    parser.add_argument("--no-browser", action="store_true", help="print the URL instead of opening a browser")
    parser.add_argument("--env-file", default=".env")
    parser.add_argument("--revoke-uri", default=REVOKE_URI, help="token revocation endpoint (default: Google's)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings({"google": {"token_file": args.token_file}}, env_file=args.env_file).google
        if args.setup:
            print(f"token written to {run_setup(settings, open_browser=not args.no_browser)} (mode 0600)")
        elif args.info:
            info = token_info(settings)
            print(json.dumps(info, indent=2))
            _warn_about_age(info["refresh_token_age_days"])
        elif args.refresh:
            store = TokenStore(settings=settings)
            store.refresh()
            print(f"refreshed; access token valid until {iso_utc(store.credentials().expiry)}")
        else:
            revoke(settings, args.revoke_uri)
            print(f"revoked and removed {settings.token_file}")
    except TokenEndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except IngestionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETTINGS if isinstance(exc, SettingsError) else EXIT_AUTH
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
