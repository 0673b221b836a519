"""Sender authentication protocols (SPF, DKIM, DMARC, ARC) and Authentication-Results."""
