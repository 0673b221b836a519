"""Exceptions raised by Mailmoat.

::

    GatewayError
     ├── ConfigError                  invalid configuration (names the key or file:line)
     ├── CheckError
     │    ├── TemporaryCheckError     the check could not run now (timeout, backend down)
     │    └── PermanentCheckError     the check can never succeed on this input
     ├── NotConfigured                a check is disabled by its configuration
     ├── RelayError                   the backend could not take the message
     │    └── BackendReplyError       the backend answered with an SMTP error reply
     └── StoreError                   the event store or quarantine failed
          └── UnknownIdError          no such event or quarantined message (or invalid id)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error Mailmoat raises on purpose."""


class ConfigError(GatewayError):
    """The configuration (file, environment or a check's section) is invalid."""


class CheckError(GatewayError):
    """A check failed to produce findings."""


class TemporaryCheckError(CheckError):
    """A check could not run now; a retry may succeed."""


class PermanentCheckError(CheckError):
    """A check cannot succeed on this input."""


class NotConfigured(GatewayError):
    """Raised by ``Check.from_config`` when the check is disabled."""


class RelayError(GatewayError):
    """The backend could not be reached or did not take the message."""


class BackendReplyError(RelayError):
    """The backend answered with an SMTP error reply, which is mirrored to the client."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class StoreError(GatewayError):
    """The event store or the quarantine could not read or write."""


class StoreBusy(StoreError):
    """A write that was not to wait found the store in use (another thread or process)."""


class UnknownIdError(StoreError):
    """The id is invalid or names nothing in the store."""
