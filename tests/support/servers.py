"""Real servers for notification tests: an SMTP server (aiosmtpd) and an HTTP server that
collect what they receive."""

from __future__ import annotations

import email
import email.policy
import json
import ssl
import threading
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK"


class SmtpServer:
    """A real SMTP server on 127.0.0.1:port; ``messages`` are the emails it accepted."""

    def __init__(
        self,
        port: int,
        *,
        credentials: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.credentials = credentials
        self.tls_context = tls_context
        self.inbox = _Inbox()
        self.controller: Controller | None = None

    @property
    def messages(self) -> list[EmailMessage]:
        return self.inbox.messages

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and (
                data.login.decode(),
                data.password.decode(),
            )
            == self.credentials
        )
        return AuthResult(success=ok)

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if self.tls_context is not None:  # STARTTLS required; AUTH only over TLS
            kwargs = {"tls_context": self.tls_context, "require_starttls": True}
        if self.credentials is not None:
            kwargs |= {
                "authenticator": self._authenticate,
                "auth_required": True,
                "auth_require_tls": self.tls_context is not None,
            }
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class WebhookServer:
    """A real HTTP server; answers ``fail_first`` POSTs with 503, then 200."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.fail_first = fail_first
        self.answered = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.answered += 1
                if outer.answered <= outer.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.requests.append((dict(self.headers.items()), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
