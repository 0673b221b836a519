"""The console's routes: login, overview, events, one event, labels, quarantine, users
(and, in gateway.web.mailbox, the mailbox owners' own quarantine).

Server-rendered pages, no JavaScript (the Content-Security-Policy forbids scripts). Every
page needs a session; every form carries a CSRF token checked on POST; roles are checked on
each route; each change is recorded as an audit event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.config import Settings
from gateway.context import new_connection_id
from gateway.digest import LinkSigner
from gateway.errors import GatewayError, UnknownIdError
from gateway.events import (
    LABELS,
    EventFilter,
    EventKind,
    EventRecorder,
    SecurityEvent,
    parse_time,
)
from gateway.quarantine import Quarantine
from gateway.relay import Reply, make_backend
from gateway.service import release_message
from gateway.store import open_store
from gateway.web import mailbox, overview
from gateway.web.message_view import describe
from gateway.web.security import (
    LoginLimiter,
    allows,
    new_token,
    same_token,
    secret_key,
    verify_password,
)

TEMPLATES = Path(__file__).parent / "templates"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' "
    "'unsafe-inline'; script-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
FILTERS = ("since", "until", "sender", "recipient", "client_ip", "action", "symbol", "rule",
           "label", "q", "kind")  # fmt: skip
# The kinds the events page offers: messages by default, every kind with "all".
EVENT_KINDS = ("message", "all", *(k.value for k in EventKind if k is not EventKind.MESSAGE))

Handler = Callable[[Request], Awaitable[Response]]


class Console:
    """State shared by the routes: settings, store, quarantine, backend, templates."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(settings.store)
        self.quarantine = Quarantine(settings.store.quarantine_dir, self.store)
        self.backend = make_backend(settings.backend, settings.server.identity)
        self.recorder = EventRecorder(self.store)
        self.limiter = LoginLimiter()
        web = settings.web
        # Digest links are signed with the console's key (mailmoat quarantine digest).
        self.links = LinkSigner(secret_key(web.secret_key, web.secret_file), web.digest_link_hours)
        # The overview aggregates a week of events: computed at most once a minute.
        self.overview_cache: tuple[float, dict[str, Any]] | None = None
        self.templates = Environment(
            loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"])
        )
        self.templates.filters["when"] = lambda t: datetime.fromtimestamp(t, UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        )

    async def release(
        self,
        message_id: str,
        actor: str,
        label_ham: bool = True,
        recipients: Sequence[str] | None = None,
    ) -> Reply:
        """Send a held message to the backend (see service.release_message)."""
        return await release_message(self.quarantine, self.store, self.backend, self.recorder,
                                     message_id, actor, label_ham, recipients)  # fmt: skip

    def page(
        self, request: Request, template: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        body = self.templates.get_template(template).render(
            user=request.session.get("user"),
            role=request.session.get("role"),
            csrf=request.session.get("csrf", ""),
            allows=allows,
            **values,
        )
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    async def session_user(self, request: Request) -> dict[str, Any] | None:
        """The user of this request's session, if the session is still live server-side.

        The signed cookie alone is not enough: logout, a new password and disabling the
        user end the session in the store, and a cookie kept from before is then refused.
        """
        sid = request.session.get("sid")
        if not sid:
            return None
        name = await asyncio.to_thread(self.store.session_user, str(sid))
        if name is None or name != request.session.get("user"):
            return None
        return await asyncio.to_thread(self.store.user, name)

    async def audit(self, request: Request, what: str, target: str = "", **details: Any) -> None:
        """Who did what, when, from where: one audit event per action."""
        event = SecurityEvent(
            id=f"{new_connection_id()}.1",
            kind=EventKind.AUDIT,
            client_ip=request.client.host if request.client else "",
            action=what,
            details={"user": request.session.get("user", ""), "target": target, **details},
        )
        # If the store is down, the action itself reports it; the audit cannot be kept then.
        with contextlib.suppress(GatewayError):
            await asyncio.to_thread(self.recorder.record, event)


def needs(
    role: str, method_check: bool = True
) -> Callable[[Callable[[Console, Request], Awaitable[Response]]], Callable[[Console], Handler]]:
    """Route decorator: a logged-in user of at least ``role``; POSTs need the CSRF token."""

    def wrap(
        view: Callable[[Console, Request], Awaitable[Response]],
    ) -> Callable[[Console], Handler]:
        def bind(console: Console) -> Handler:
            async def handler(request: Request) -> Response:
                user = await console.session_user(request)
                if user is None or user["disabled"]:
                    if "user" in request.session:  # a stale staff session; a mailbox one stays
                        request.session.clear()
                    return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", 303)
                request.session["role"] = user["role"]
                if not allows(user["role"], role):
                    await console.audit(request, "forbidden", request.url.path)
                    return console.page(
                        request, "error.html", 403, message="Your role may not do this."
                    )
                if request.method == "POST" and method_check:
                    form = await request.form()
                    if not same_token(str(form.get("csrf", "")), request.session.get("csrf")):
                        await console.audit(request, "csrf_refused", request.url.path)
                        return console.page(
                            request,
                            "error.html",
                            403,
                            message="Invalid form token: reload the page.",
                        )
                return await view(console, request)

            return handler

        return bind

    return wrap


# --- login ------------------------------------------------------------------------------


async def login(console: Console, request: Request) -> Response:
    if request.method == "GET":
        request.session.setdefault("csrf", new_token())
        return console.page(request, "login.html", next=request.query_params.get("next", "/"))
    form = await request.form()
    name = str(form.get("username", ""))[:100]
    password = str(form.get("password", ""))[:1000]
    target = str(form.get("next", "/"))
    target = target if target.startswith("/") and not target.startswith("//") else "/"
    ip = request.client.host if request.client else ""
    if not same_token(str(form.get("csrf", "")), request.session.get("csrf")):
        return console.page(request, "login.html", 403, error="Invalid form token.", next=target)
    if console.limiter.blocked(ip, name):
        await console.audit(request, "login_rate_limited", name)
        return console.page(
            request,
            "login.html",
            429,
            error="Too many failed attempts: wait a few minutes.",
            next=target,
        )
    user = await asyncio.to_thread(console.store.user, name)
    ok = await asyncio.to_thread(verify_password, user["hash"] if user else None, password)
    if not ok or user is None or user["disabled"]:
        console.limiter.failed(ip, name)
        await console.audit(request, "login_failed", name)
        return console.page(
            request, "login.html", 401, error="Wrong user name or password.", next=target
        )
    request.session.clear()  # a new session on login (no fixation)
    seconds = console.settings.web.session_hours * 3600
    sid = await asyncio.to_thread(console.store.start_session, user["name"], seconds)
    request.session.update({"user": user["name"], "role": user["role"], "csrf": new_token(),
                            "since": time.time(), "sid": sid})  # fmt: skip
    await console.audit(request, "login", name)
    return RedirectResponse(target, 303)


@needs("viewer")
async def logout(console: Console, request: Request) -> Response:
    await console.audit(request, "logout")
    sid = request.session.get("sid")
    if sid:
        await asyncio.to_thread(console.store.end_session, str(sid))
    request.session.clear()
    return RedirectResponse("/login", 303)


# --- pages ------------------------------------------------------------------------------


@needs("viewer")
async def home(console: Console, request: Request) -> Response:
    cached = console.overview_cache
    if cached is None or time.monotonic() - cached[0] > 60:
        data = await asyncio.to_thread(overview.summary, console.store, console.settings)
        console.overview_cache = cached = (time.monotonic(), data)
    return console.page(request, "overview.html", **cached[1])


def event_filter(params: Any, limit: int) -> tuple[EventFilter, dict[str, str]]:
    """An EventFilter from query parameters (bad times are ignored, with a message)."""
    values = {k: str(params.get(k, "")).strip()[:200] for k in FILTERS}
    since = until = None
    try:
        since = parse_time(values["since"]) if values["since"] else None
        until = parse_time(values["until"]) if values["until"] else None
    except ValueError:
        values["error"] = "Times are like 24h, 7d or 2026-11-21T10:00."
    before = None
    if params.get("before"):
        stamp, _, event_id = str(params["before"]).partition(":")
        try:
            before = (float(stamp), event_id)
        except ValueError:
            before = None
    where = EventFilter(
        since=since, until=until, action=values["action"] or None, sender=values["sender"] or None,
        symbol=values["symbol"] or values["rule"] or None, recipient=values["recipient"] or None,
        client_ip=values["client_ip"] or None, text=values["q"] or None,
        label=values["label"] or None, before=before, limit=limit, kind=event_kind(values["kind"]),
    )  # fmt: skip
    return where, values


def event_kind(asked: str) -> str | None:
    """The kind to list: messages unless asked, any kind for "all"; unknown ones: messages."""
    if asked == "all":
        return None
    return asked if asked in EVENT_KINDS else EventKind.MESSAGE


@needs("viewer")
async def events(console: Console, request: Request) -> Response:
    size = console.settings.web.page_size
    where, values = event_filter(request.query_params, size + 1)
    rows = await asyncio.to_thread(console.store.list, where)
    more = len(rows) > size
    rows = rows[:size]
    labels = {e.id: await asyncio.to_thread(console.store.current_label, e.id) for e in rows}
    query = {k: v for k, v in values.items() if v and k in FILTERS}
    next_link = None
    if more and rows:
        next_link = "/events?" + urlencode({**query, "before": f"{rows[-1].time}:{rows[-1].id}"})
    return console.page(request, "events.html", events=rows, labels=labels, filters=values,
                        next_link=next_link, label_names=LABELS, kinds=EVENT_KINDS,
                        query=urlencode(query))  # fmt: skip


TRACKING = ("sender", "recipient", "client_ip", "message_id", "queue_id", "since", "until")


@needs("viewer")
async def tracking(console: Console, request: Request) -> Response:
    """'Where is my mail?': every event of any kind that matches, one row per recipient."""
    values = {k: str(request.query_params.get(k, "")).strip()[:200] for k in TRACKING}
    rows: list[tuple[SecurityEvent, str]] = []
    error = ""
    if any(values[k] for k in TRACKING[:5]):
        try:
            since = parse_time(values["since"] or "7d")
            until = parse_time(values["until"]) if values["until"] else None
        except ValueError:
            since, until, error = None, None, "Times are like 24h, 7d or 2026-11-21T10:00."
        if not error:
            where = EventFilter(
                since=since, until=until, sender=values["sender"] or None,
                recipient=values["recipient"] or None, client_ip=values["client_ip"] or None,
                message_id=values["message_id"] or None, queue_id=values["queue_id"] or None,
                limit=500,
            )  # fmt: skip
            found = await asyncio.to_thread(console.store.list, where)
            rows = [(e, rcpt) for e in found for rcpt in (e.rcpts or ("",))]
    return console.page(request, "tracking.html", rows=rows, filters=values, error=error)


@needs("viewer")
async def event(console: Console, request: Request) -> Response:
    event_id = request.path_params["event_id"]
    try:
        item = await asyncio.to_thread(console.store.get, event_id)
    except UnknownIdError:
        return console.page(request, "error.html", 404, message="No such event.")
    retained = await asyncio.to_thread(console.store.retained, event_id)
    history = await asyncio.to_thread(console.store.labels, event_id)
    text = None
    if retained is not None and retained.raw is not None:
        # Shown as text in <pre>, escaped by the template: never rendered as HTML.
        text = retained.raw[:200_000].decode("utf-8", "replace")
    rules = [s for s in item.symbols if s.get("check") == "rules"]
    return console.page(request, "event.html", event=item, message=text, history=history,
                        rules=rules, label_names=LABELS)  # fmt: skip


@needs("analyst")
async def label(console: Console, request: Request) -> Response:
    form = await request.form()
    ids = [str(i) for i in form.getlist("ids")] or [request.path_params.get("event_id", "")]
    chosen = str(form.get("label", ""))
    note = str(form.get("note", ""))[:1000]
    user = request.session["user"]
    done = 0
    for event_id in ids[:500]:
        try:
            if chosen == "withdraw":
                await asyncio.to_thread(console.store.withdraw_labels, event_id, user)
            else:
                await asyncio.to_thread(
                    console.store.add_label, event_id, chosen, "console", user, note
                )
            done += 1
        except (UnknownIdError, ValueError):
            continue
    await console.audit(request, "label", ",".join(ids[:20]), label=chosen, count=done)
    back = str(form.get("back", "/events"))
    return RedirectResponse(
        back if back.startswith("/") and not back.startswith("//") else "/events", 303
    )


@needs("viewer")
async def quarantine_list(console: Console, request: Request) -> Response:
    search = str(request.query_params.get("q", "")).strip()[:200]
    status = str(request.query_params.get("status", "held"))
    status = status if status in ("held", "released", "deleted", "all") else "held"
    items = await asyncio.to_thread(
        console.quarantine.list, None if status == "all" else status, 200, search
    )
    return console.page(request, "quarantine.html", items=items, search=search, state=status)


BULK_ACTIONS = {"release": "Release", "release-ham": "Release and label ham", "delete": "Delete"}


@needs("admin")
async def quarantine_bulk(console: Console, request: Request) -> Response:
    """Several held messages at once: a confirmation page first, then each one's result."""
    form = await request.form()
    ids = [str(i) for i in form.getlist("ids")][:200]
    what = str(form.get("what", ""))
    if what not in BULK_ACTIONS or not ids:
        return console.page(request, "error.html", 400, message="Select messages and an action.")
    entries = []
    for qid in ids:
        try:
            entries.append(await asyncio.to_thread(console.quarantine.get, qid))
        except UnknownIdError:
            continue
    if form.get("confirm") != "yes":
        return console.page(request, "quarantine_bulk.html", entries=entries, what=what,
                            label=BULK_ACTIONS[what], results=None)  # fmt: skip
    user = request.session["user"]
    results = []
    for entry in entries:
        try:
            if what == "delete":
                await asyncio.to_thread(console.quarantine.set_status, entry.id, "deleted")
                outcome = "deleted"
            else:
                reply = await console.release(entry.id, user, label_ham=what == "release-ham")
                outcome = "released" if reply.ok else f"still held: {reply}"
        except GatewayError as exc:
            outcome = f"failed: {exc}"
        await console.audit(request, what, entry.id, outcome=outcome, bulk=True)
        results.append((entry, outcome))
    return console.page(request, "quarantine_bulk.html", entries=entries, what=what,
                        label=BULK_ACTIONS[what], results=results)  # fmt: skip


@needs("viewer")
async def quarantine_item(console: Console, request: Request) -> Response:
    qid = request.path_params["qid"]
    try:
        entry = await asyncio.to_thread(console.quarantine.get, qid)
        raw = (
            await asyncio.to_thread(console.quarantine.read, qid) if entry.status == "held" else b""
        )
    except UnknownIdError:
        return console.page(request, "error.html", 404, message="No such quarantined message.")
    view = await asyncio.to_thread(describe, raw) if raw else None
    return console.page(request, "quarantine_item.html", entry=entry, view=view,
                        message=raw[:200_000].decode("utf-8", "replace"))  # fmt: skip


@needs("admin")
async def quarantine_action(console: Console, request: Request) -> Response:
    qid = request.path_params["qid"]
    what = request.path_params["what"]
    user = request.session["user"]
    try:
        if what in ("release", "release-ham"):
            reply = await console.release(qid, user, label_ham=what == "release-ham")
            await console.audit(request, what, qid, backend_reply=str(reply))
            if not reply.ok:
                return console.page(
                    request, "error.html", 502, message=f"The mail store refused: {reply}"
                )
        elif what == "delete":
            await asyncio.to_thread(console.quarantine.set_status, qid, "deleted")
            await console.audit(request, "delete", qid)
        else:
            return console.page(request, "error.html", 404, message="No such action.")
    except UnknownIdError as exc:
        return console.page(request, "error.html", 404, message=str(exc))
    except GatewayError as exc:
        return console.page(request, "error.html", 503, message=f"Could not {what}: {exc}")
    return RedirectResponse("/quarantine", 303)


@needs("admin")
async def users(console: Console, request: Request) -> Response:
    from gateway.web.security import ROLES, hash_password

    message = ""
    if request.method == "POST":
        form = await request.form()
        name = str(form.get("name", "")).strip()[:64]
        role = str(form.get("role", ""))
        action = str(form.get("action", ""))
        if action in ("disable", "enable"):
            known = await asyncio.to_thread(console.store.user, name)
            if known is None:
                message = f"No user {name!r}."
            elif action == "disable" and name == request.session.get("user"):
                message = "You cannot disable yourself."
            else:
                # Disabling ends the user's sessions at once (the store deletes them).
                await asyncio.to_thread(console.store.set_user, name, disabled=action == "disable")
                await console.audit(request, f"user_{action}d", name)
                message = f"{name} is {action}d."
        elif role not in ROLES or not name.isidentifier():
            message = "Give a name (letters, digits, _) and a role."
        elif form.get("password"):
            try:
                digest = await asyncio.to_thread(hash_password, str(form["password"]))
            except ValueError as exc:
                message = str(exc)
            else:
                await asyncio.to_thread(console.store.add_user, name, digest, role)
                await console.audit(request, "user_saved", name, role=role)
                message = f"Saved {name} ({role})."
        else:
            await asyncio.to_thread(console.store.set_user, name, role=role)
            await console.audit(request, "user_role", name, role=role)
            message = f"{name} is now {role}."
    listing = await asyncio.to_thread(console.store.users)
    return console.page(request, "users.html", users=listing, message=message, roles=ROLES)


async def healthz(console: Console, request: Request) -> Response:
    return PlainTextResponse("ok\n")


def create_app(settings: Settings) -> Starlette:
    """The console as an ASGI application."""
    console = Console(settings)

    def bound(view: Callable[[Console, Request], Awaitable[Response]]) -> Handler:
        async def handler(request: Request) -> Response:
            return await view(console, request)

        return handler

    routes = [
        Route("/login", bound(login), methods=["GET", "POST"]),
        Route("/logout", logout(console), methods=["POST"]),
        Route("/", home(console)),
        Route("/events", events(console)),
        Route("/events/label", label(console), methods=["POST"]),
        Route("/events/{event_id}", event(console)),
        Route("/tracking", tracking(console)),
        Route("/events/{event_id}/label", label(console), methods=["POST"]),
        Route("/quarantine", quarantine_list(console)),
        Route("/quarantine/bulk", quarantine_bulk(console), methods=["POST"]),
        Route("/quarantine/{qid}", quarantine_item(console)),
        Route("/quarantine/{qid}/{what}", quarantine_action(console), methods=["POST"]),
        Route("/users", users(console), methods=["GET", "POST"]),
        Route("/healthz", bound(healthz)),
        # Mailbox owners (gateway.web.mailbox): no staff account, their own mail only.
        Route("/q/{token}", bound(mailbox.digest_link), methods=["GET", "POST"]),
        Route("/my", bound(mailbox.my_quarantine)),
        Route("/my", bound(mailbox.my_signin_request), methods=["POST"]),
        Route("/my/signin/{token}", bound(mailbox.my_signin), methods=["GET", "POST"]),
        Route("/my/act", bound(mailbox.my_action), methods=["POST"]),
    ]
    web = settings.web
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=secret_key(web.secret_key, web.secret_file),
            session_cookie="mailmoat_session",
            max_age=int(web.session_hours * 3600),
            same_site="strict",
            https_only=web.secure_cookies,
        )
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.console = console
    return app
