"""A local SMTP server for the demo (aiosmtpd): it accepts every email and saves it as an
``.eml`` file, so the demo shows real notification emails without a mail server."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from demo.broker import free_port


class Mailbox:
    """SMTP on 127.0.0.1:``port``; each accepted email becomes ``folder/NNN.eml``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        (self.folder / f"{len(self.messages):03d}.eml").write_bytes(envelope.content)
        return "250 OK"

    def start(self) -> Mailbox:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
