"""Console security: password hashing, roles, CSRF tokens, login rate limiting."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import defaultdict, deque
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("viewer", "analyst", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}
_HASHER = PasswordHasher()
# Verifying against this when the user does not exist keeps timing from revealing names.
_DUMMY = _HASHER.hash("mailmoat-no-such-user")


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi defaults: RFC 9106 low-memory profile)."""
    if len(password) < 10:
        raise ValueError("passwords need at least 10 characters")
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-work check of a password against a stored hash (or a dummy one)."""
    try:
        return _HASHER.verify(stored_hash or _DUMMY, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def allows(role: str, needed: str) -> bool:
    """viewer < analyst < admin."""
    return _RANK.get(role, -1) >= _RANK[needed]


def new_token() -> str:
    """A CSRF token (or any unguessable value)."""
    return secrets.token_urlsafe(32)


def same_token(a: str | None, b: str | None) -> bool:
    """Compare tokens in constant time."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


class LoginLimiter:
    """Failed logins per client address and per user name in a sliding window."""

    def __init__(self, per_ip: int = 10, per_user: int = 5, window: float = 300.0) -> None:
        self.per_ip = per_ip
        self.per_user = per_user
        self.window = window
        self.failures: defaultdict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str, now: float) -> int:
        queue = self.failures[key]
        while queue and queue[0] < now - self.window:
            queue.popleft()
        return len(queue)

    def blocked(self, ip: str, user: str, now: float | None = None) -> bool:
        """True when either the address or the name had too many recent failures."""
        now = now if now is not None else time.monotonic()
        return (
            self._recent(f"ip:{ip}", now) >= self.per_ip
            or self._recent(f"user:{user.lower()}", now) >= self.per_user
        )

    def failed(self, ip: str, user: str, now: float | None = None) -> None:
        """Count one failure for both keys."""
        now = now if now is not None else time.monotonic()
        self.failures[f"ip:{ip}"].append(now)
        self.failures[f"user:{user.lower()}"].append(now)


def secret_key(configured: str, path: Path) -> str:
    """The configured key, or one generated once into a 0600 file."""
    if configured:
        return configured
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    with path.open("x") as handle:
        path.chmod(0o600)
        handle.write(key)
    return key
