"""Async protocol clients for the services checks depend on (clamd, DNS)."""
