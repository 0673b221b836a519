"""Offline training tools for Mailmoat's spam model (the gateway never imports this package)."""
