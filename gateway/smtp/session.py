"""One client connection of the SMTP front: its ids, counters and backend session.

The protocol object (``MailmoatSMTP``) speaks SMTP; what we keep about the client lives here,
so the handler and the server read one plain object instead of attributes of aiosmtpd's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.context import new_connection_id
from gateway.relay import Backend, BackendSession


@dataclass
class ClientSession:
    """What Mailmoat knows and counts about one client connection."""

    conn_id: str = field(default_factory=new_connection_id)
    seq: int = 0  # events recorded so far in this connection
    client_ip: str = ""
    client_port: int = 0
    refusal: str | None = None  # the 421 it gets instead of a greeting, if any
    registered: bool = False  # counted in the server's connection limits
    backend: BackendSession | None = None
    mail_pending: bool = False  # between MAIL and its reply (a drain waits for it)
    errors: int = 0  # error replies since the last message taken (see max_errors)
    rcpt_overflow: bool = False  # a recipient over max_recipients was refused (and recorded)
    helo_checked: bool = False  # the HELO phase's checks ran (once, at the first MAIL)

    def next_event_id(self) -> str:
        """Connection id plus '.N': one number per event in this connection."""
        self.seq += 1
        return f"{self.conn_id}.{self.seq}"

    def backend_session(self, backend: Backend) -> BackendSession:
        """The backend session of this client connection, created on first use."""
        if self.backend is None:
            self.backend = backend.session()
        return self.backend

    async def close_backend(self) -> None:
        """Close the backend session, if any."""
        session, self.backend = self.backend, None
        if session is not None:
            await session.close()
