"""A loopback OAuth2 token endpoint: answers refresh_token grants with JWTs that the test
Dovecot accepts, or with `invalid_grant` once told to."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from email_ingestion.sandbox.dovecot import mint_jwt


class TokenServer:
    def __init__(self, email: str, refresh_token: str = "1//test-refresh-token-abcdefghij") -> None:
        self.email = email
        self.refresh_token = refresh_token
        self.requests = 0
        self.fail_with: str | None = None
        self.paths: list[str] = []  # every request's path, query included
        self.revoked: list[str] = []  # tokens posted to /revoke in the form body
        self.lifetime_s = 3600
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                outer.paths.append(self.path)
                if self.path.startswith("/revoke"):
                    outer.revoked += form.get("token", [])
                    status, body = 200, {}
                else:
                    outer.requests += 1
                    status, body = outer._answer(form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _answer(self, form: dict[str, list[str]]) -> tuple[int, dict[str, object]]:
        if self.fail_with or form.get("refresh_token", [""])[0] != self.refresh_token:
            return 400, {"error": self.fail_with or "invalid_grant", "error_description": "Bad Request"}
        return 200, {"access_token": mint_jwt(self.email, self.lifetime_s), "expires_in": self.lifetime_s,
                     "token_type": "Bearer", "scope": "https://mail.google.com/"}

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
