"""Mailmoat: a security and anti-spam filtering SMTP gateway."""

__version__ = "0.1.0"
