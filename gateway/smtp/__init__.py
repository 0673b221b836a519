"""The SMTP front: aiosmtpd protocol, proxy handler and listening server."""
