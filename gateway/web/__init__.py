"""The review console: events, triage labels, quarantine, users (Starlette + Jinja2)."""
