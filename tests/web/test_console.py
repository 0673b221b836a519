"""The review console in a real headless Chromium (Debian's), against a real store and sink."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import uvicorn
from aiosmtpd.controller import Controller
from playwright.sync_api import sync_playwright

from gateway.config import load_settings
from gateway.events import EventFilter, Retained, SecurityEvent
from gateway.quarantine import Quarantine
from gateway.store import SqliteStore
from gateway.web.app import create_app
from gateway.web.security import hash_password
from tests.conftest import free_port, message, write_config
from tests.sink import SinkHandler

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("MAILMOAT_ARTIFACTS", "var/test-artifacts"))
PASSWORD = "correct horse battery"
XSS = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def sink():
    handler = SinkHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, handler
    controller.stop()


@pytest.fixture(scope="module")
def console(tmp_path_factory, sink):
    tmp = tmp_path_factory.mktemp("console")
    controller, _ = sink
    port = free_port()
    config = write_config(tmp / "c.toml", {
        "store": {"path": str(tmp / "store")},
        "backend": {"kind": "smtp", "host": "127.0.0.1", "port": controller.port},
        "web": {"secret_file": str(tmp / "secret"), "public_url": f"http://127.0.0.1:{port}"},
        "server": {"accept_domains": ["example.test"]},
    })  # fmt: skip
    settings = load_settings(config)
    store = SqliteStore(settings.store.database)
    for name, role in (("ana", "analyst"), ("adam", "admin"), ("vic", "viewer")):
        store.add_user(name, hash_password(PASSWORD), role)
    now = time.time()
    symbol = {"name": "HDR_MISSING_DATE", "score": 1.0, "check": "headers", "status": "fail",
              "details": {}}  # fmt: skip
    for n in range(60):
        raw = message(subject=f"Report {n}", body=f"Body of report {n}.\r\n")
        event = SecurityEvent(
            id=f"{n:016x}.1",
            kind="message",
            time=now - 60 * n,
            mail_from=f"user{n % 3}@sender.test",
            rcpts=("bob@example.test",),
            subject=f"Report {n}",
            action="accept" if n % 4 else "tag",
            score=1.0 + n % 5,
            client_ip="192.0.2.7",
            symbols=(symbol,),
        )
        store.add(event, Retained(raw, None, None))
    hostile = message(subject=XSS, body=XSS + "\r\n")
    hostile_event = SecurityEvent(
        id="00000000000000ff.1",
        kind="message",
        time=now,
        subject=XSS,
        mail_from="evil@attacker.test",
        action="quarantine",
        rcpts=("bob@example.test",),
    )
    store.add(hostile_event, Retained(hostile, None, None))
    Quarantine(settings.store.quarantine_dir, store).hold(
        "00000000000000ff.1",
        "evil@attacker.test",
        ("bob@example.test",),
        XSS,
        12.0,
        "score 12",
        hostile,
    )
    store.close()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", settings
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )  # fmt: skip
        yield chromium
        chromium.close()


def login(browser, base, user):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/events")
    assert page.url.startswith(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/events")
    return context, page


def store_of(settings):
    return SqliteStore(settings.store.database)


def test_unauthenticated_requests_are_refused(console):
    base, settings = console
    for path in ("/", "/events", "/events/0000000000000001.1", "/quarantine", "/users"):
        request = urllib.request.Request(base + path)
        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(request)
        assert refused.value.code == 303
        assert refused.value.headers["Location"].startswith("/login")
        refused.value.close()
    post = urllib.request.Request(f"{base}/events/label", data=b"ids=0000000000000001.1&label=spam",
                                  method="POST")  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused_post:
        urllib.request.build_opener(NoRedirect).open(post)
    refused_post.value.close()
    store = store_of(settings)
    assert store.current_label("0000000000000001.1") is None
    store.close()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_analyst_filters_opens_and_labels(console, browser):
    base, settings = console
    context, page = login(browser, base, "ana")
    page.fill("input[name=sender]", "user1@sender.test")
    page.click("form.filters button")
    rows = page.locator("#events tr").count() - 1
    assert rows == 20  # 60 events, a third from user1
    assert "user1@sender.test" in page.inner_text("#events")
    page.screenshot(path=str(ARTIFACTS / "events-filtered.png"), full_page=True)
    page.locator("#events a").first.click()  # the newest matching event
    page.wait_for_url(f"{base}/events/*")
    event_id = page.url.rsplit("/", 1)[1]
    assert "HDR_MISSING_DATE" in page.inner_text("#symbols")
    assert "Body of report" in page.inner_text("#message")
    page.select_option("select[name=label]", "spam")
    page.fill("input[name=note]", "obvious")
    page.click("#label-button")
    page.wait_for_url(f"{base}/events/{event_id}")
    assert "spam" in page.inner_text("#labels")
    page.screenshot(path=str(ARTIFACTS / "event-labelled.png"), full_page=True)
    store = store_of(settings)
    label = store.current_label(event_id)
    assert (label.label, label.author, label.source, label.note) == (
        "spam",
        "ana",
        "console",
        "obvious",
    )
    audits = store.list(EventFilter(kind="audit", limit=100))
    assert {"login", "label"} <= {a.action for a in audits}
    store.close()
    context.close()


def test_bulk_labelling_and_pagination(console, browser):
    base, _ = console
    context, page = login(browser, base, "ana")
    assert page.locator("#next").count() == 1  # 61 events, 50 a page
    boxes = page.locator("input[name=ids]")
    for i in range(3):
        boxes.nth(i).check()
    page.select_option("form[action='/events/label'] select[name=label]", "phish")
    page.click("form[action='/events/label'] button[type=submit]")
    page.wait_for_url(f"{base}/events*")
    page.goto(f"{base}/events?label=phish")
    assert page.locator("#events tr").count() - 1 == 3
    context.close()


def test_admin_releases_a_quarantined_message_and_it_arrives(console, browser, sink):
    base, settings = console
    _, handler = sink
    context, page = login(browser, base, "adam")
    page.goto(f"{base}/quarantine")
    page.screenshot(path=str(ARTIFACTS / "quarantine.png"), full_page=True)
    page.click("#quarantine button[formaction$='/release-ham']")
    page.wait_for_url(f"{base}/quarantine")
    assert "Nothing matches" in page.inner_text("#quarantine")
    deadline = time.monotonic() + 10
    while not handler.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    [arrived] = handler.messages
    assert arrived.rcpts == ["bob@example.test"]
    store = store_of(settings)
    assert store.current_label("00000000000000ff.1").label == "ham"
    assert "release-ham" in {a.action for a in store.list(EventFilter(kind="audit", limit=100))}
    store.close()
    context.close()


def test_message_content_is_escaped_not_rendered(console, browser):
    base, _ = console
    context, page = login(browser, base, "vic")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{base}/events/00000000000000ff.1")
    assert XSS in page.inner_text("#subject")  # shown as text
    assert XSS in page.inner_text("#message")
    assert page.title() != "pwned"
    assert dialogs == []
    assert page.locator("img[src=x]").count() == 0
    page.goto(f"{base}/events")
    assert page.title() != "pwned"
    context.close()


def test_forged_csrf_and_roles_are_refused(console, browser):
    base, settings = console
    context, _ = login(browser, base, "vic")
    # A viewer may look, not label.
    target = f"{base}/events/0000000000000002.1/label"
    response = context.request.post(target, form={"label": "spam", "csrf": "x"}, max_redirects=0)
    assert response.status == 403
    context.close()
    context, _ = login(browser, base, "ana")
    response = context.request.post(
        target, form={"label": "spam", "csrf": "forged"}, max_redirects=0
    )
    assert response.status == 403
    assert "Invalid form token" in response.text()
    store = store_of(settings)
    assert store.current_label("0000000000000002.1") is None
    assert "csrf_refused" in {a.action for a in store.list(EventFilter(kind="audit", limit=200))}
    store.close()
    # An analyst may not release or manage users.
    response = context.request.get(f"{base}/users", max_redirects=0)
    assert response.status == 403
    context.close()


def test_login_is_rate_limited(console, browser):
    base, _ = console
    context = browser.new_context()
    page = context.new_page()
    statuses = []
    for _ in range(6):
        page.goto(f"{base}/login")
        page.fill("input[name=username]", "mallory")  # unknown users are limited too
        page.fill("input[name=password]", "wrong password!")
        with page.expect_response(f"{base}/login") as response:
            page.click("button[type=submit]")
        statuses.append(response.value.status)
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429
    assert "Too many failed attempts" in page.inner_text("#error")
    context.close()


def test_overview_page(console, browser):
    base, _ = console
    context, page = login(browser, base, "adam")
    page.goto(f"{base}/")
    assert page.locator("svg rect").count() > 0
    assert "HDR_MISSING_DATE" in page.inner_text("main")
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
    headers = context.request.get(f"{base}/").headers
    assert "script-src 'none'" in headers["content-security-policy"]
    context.close()


def test_secrets_never_reach_the_log_or_the_audit_trail(console, browser, caplog):
    base, settings = console
    caplog.set_level(logging.DEBUG)
    wrong = "a wrong secret 42"
    context, page = login(browser, base, "adam")
    page.goto(f"{base}/login")
    page.fill("input[name=username]", "adam")
    page.fill("input[name=password]", wrong)
    page.click("button[type=submit]")
    page.wait_for_selector("#error")
    context.close()
    store = store_of(settings)
    try:
        audits = store.list(EventFilter(kind="audit", limit=1000))
    finally:
        store.close()
    # The attempts are on record (who, when, from where), their passwords are not.
    assert {"login", "login_failed"} <= {e.action for e in audits}
    recorded = json.dumps([e.to_dict() for e in audits]) + caplog.text
    for secret in (PASSWORD, wrong, settings.web.secret_file.read_text().strip()):
        assert secret not in recorded


def test_sessions_end_server_side_on_logout_new_password_and_disable(console, browser):
    """A cookie copied before logout, a password change or disabling no longer opens pages."""
    base, settings = console
    store = store_of(settings)
    store.add_user("sam", hash_password(PASSWORD), "viewer")

    def stolen_copy(context):
        thief = browser.new_context()
        thief.add_cookies(context.cookies())
        return thief

    def opens_events(context) -> bool:
        return context.request.get(f"{base}/events", max_redirects=0).status == 200

    # Logout: the copy taken before is refused once the owner logs out.
    context, page = login(browser, base, "sam")
    thief = stolen_copy(context)
    assert opens_events(thief)
    page.click("nav form button")
    page.wait_for_url(f"{base}/login")
    assert not opens_events(thief)
    thief.close()
    context.close()
    # A new password ends every session of the user.
    context, _ = login(browser, base, "sam")
    assert opens_events(context)
    store.add_user("sam", hash_password("another long password"), "viewer")
    assert not opens_events(context)
    context.close()
    # Disabling ends them, and enabling again does not bring them back.
    store.add_user("sam", hash_password(PASSWORD), "viewer")
    context, _ = login(browser, base, "sam")
    store.set_user("sam", disabled=True)
    store.set_user("sam", disabled=False)
    assert not opens_events(context)
    context.close()
    store.close()


def test_absurd_times_are_a_message_not_a_500(console, browser):
    base, _ = console
    context, _ = login(browser, base, "vic")
    for since in ("99999999999999d", "9" * 5000 + "d", "2026-13-45"):
        response = context.request.get(f"{base}/events?since={since}")
        assert response.status == 200, since
        assert "Times are like 24h" in response.text()
    context.close()


def test_an_admin_disables_and_enables_a_user_and_it_is_audited(console, browser):
    base, settings = console
    store = store_of(settings)
    store.add_user("dora", hash_password(PASSWORD), "viewer")
    store.close()
    dora, _ = login(browser, base, "dora")
    admin, page = login(browser, base, "adam")
    page.goto(f"{base}/users")
    page.click("#disable-dora")
    assert "dora is disabled." in page.inner_text("#message")
    # Her open session ends, and she cannot log in again.
    assert dora.request.get(f"{base}/events", max_redirects=0).status == 303
    page.click("#disable-adam")
    assert "You cannot disable yourself." in page.inner_text("#message")
    page.click("#enable-dora")
    assert "dora is enabled." in page.inner_text("#message")
    store = store_of(settings)
    actions = [e.action for e in store.list(EventFilter(kind="audit", limit=500))]
    store.close()
    assert "user_disabled" in actions
    assert "user_enabled" in actions
    dora.close()
    admin.close()


def test_the_events_page_finds_every_kind_of_event(console, browser):
    """Refused recipients and audit actions are events the console can find, not only mail."""
    base, settings = console
    store = store_of(settings)
    refused = SecurityEvent(
        id="00000000000000fe.1", kind="rcpt_refused", action="refused",
        mail_from="probe@spammer.test", rcpts=("nobody@example.test",),
        smtp_reply="550 5.1.1 <nobody@example.test>: User unknown",
    )  # fmt: skip
    store.add(refused)
    store.close()
    context, page = login(browser, base, "ana")
    page.goto(f"{base}/events")
    assert "User unknown" not in page.inner_text("#events")  # messages by default
    page.select_option("#kind", "rcpt_refused")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**kind=rcpt_refused**")
    table = page.inner_text("#events")
    assert "rcpt_refused" in table
    assert "550 5.1.1 <nobody@example.test>: User unknown" in table
    page.goto(f"{base}/events?kind=all")
    assert "login" in page.inner_text("#events")  # the audit trail is there too
    context.close()


def test_quarantine_search_and_bulk_release_with_a_confirmation(console, browser, sink):
    base, settings = console
    _, handler = sink
    store = store_of(settings)
    held = Quarantine(settings.store.quarantine_dir, store)
    for n, subject in enumerate(("Invoice 1", "Invoice 2", "Newsletter")):
        event_id = f"{0xE0 + n:016x}.1"
        raw = message(subject=subject)
        event = SecurityEvent(id=event_id, kind="message", subject=subject, action="quarantine",
                              rcpts=("bob@example.test",))  # fmt: skip
        store.add(event, Retained(raw, None, None))
        held.hold(event_id, "a@sender.test", ("bob@example.test",), subject, 11.0, "score 11", raw)
    store.close()
    before = len(handler.messages)
    context, page = login(browser, base, "adam")
    page.goto(f"{base}/quarantine")
    page.fill("#q", "invoice")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**q=invoice**")
    rows = page.inner_text("#quarantine")
    assert "Invoice 1" in rows
    assert "Invoice 2" in rows
    assert "Newsletter" not in rows
    for box in page.query_selector_all("#quarantine input[name=ids]"):
        box.check()
    page.select_option("#bulk-what", "release")
    page.click("#bulk")
    assert "Release: 2 message(s)?" in page.inner_text("h1")  # asked first, nothing done yet
    assert len(handler.messages) == before
    page.click("#confirm")
    results = page.inner_text("#results")
    assert results.count("released") == 2
    deadline = time.monotonic() + 10
    while len(handler.messages) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(handler.messages) == before + 2
    page.goto(f"{base}/quarantine?status=all&q=newsletter")
    assert "held" in page.inner_text("#quarantine")
    context.close()


def test_tracking_finds_mail_by_queue_id_and_message_id_one_row_per_recipient(console, browser):
    base, settings = console
    store = store_of(settings)
    store.add(SecurityEvent(
        id="00000000000000d1.1", kind="message", action="accept", mail_from="carol@sender.test",
        rcpts=("bob@example.test", "dave@example.test"), message_id="<track-1@sender.test>",
        subject="Minutes", smtp_reply="250 2.0.0 OK: queued as 00000000000000d1.1",
        backend_reply="250 2.0.0 Ok: queued as 4F2A1B3C9D",
    ))  # fmt: skip
    store.add(SecurityEvent(
        id="00000000000000d2.1", kind="rcpt_refused", action="refused",
        mail_from="carol@sender.test", rcpts=("gone@example.test",),
        smtp_reply="550 5.1.1 <gone@example.test>: User unknown",
    ))  # fmt: skip
    store.close()
    context, page = login(browser, base, "vic")
    page.goto(f"{base}/tracking")
    page.fill("#t-queue_id", "4F2A1B3C9D")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**queue_id=4F2A1B3C9D**")
    table = page.inner_text("#tracking")
    assert "bob@example.test" in table
    assert "dave@example.test" in table  # one row per recipient
    assert "queued as 4F2A1B3C9D" in table
    page.goto(f"{base}/tracking?message_id=track-1@sender.test")  # brackets optional
    assert "Minutes" in page.inner_text("#tracking")
    page.goto(f"{base}/tracking?sender=carol@sender.test")
    table = page.inner_text("#tracking")
    assert "rcpt_refused" in table  # refusals are found too
    assert "User unknown" in table
    page.click("#tracking a >> nth=0")
    page.wait_for_url("**/events/00000000000000d*")
    context.close()


def test_a_held_message_is_shown_parsed_links_and_attachments_explained(console, browser):
    """Not raw MIME: attachments with true type and hash, archive members, misleading links."""
    import hashlib
    import zipfile
    from email.message import EmailMessage

    base, settings = console
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr("invoice.pdf.exe", b"MZ" + b"\0" * 200)
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "it@bank.test", "bob@example.test", "Verify now"
    mail.set_content("Please verify.")
    mail.add_alternative('<p>Log in at <a href="http://evil.example/x">www.bank.test</a> '
                         "today.</p>", subtype="html")  # fmt: skip
    mail.add_attachment(payload.getvalue(), maintype="application", subtype="zip",
                        filename="invoice.zip")  # fmt: skip
    raw = mail.as_bytes()
    store = store_of(settings)
    store.add(SecurityEvent(id="00000000000000c1.1", kind="message", subject="Verify now",
                            action="quarantine"), Retained(raw, None, None))  # fmt: skip
    Quarantine(settings.store.quarantine_dir, store).hold(
        "00000000000000c1.1", "it@bank.test", ("bob@example.test",), "Verify now", 14.0,
        "score 14", raw,
    )  # fmt: skip
    store.close()
    context, page = login(browser, base, "vic")
    page.goto(f"{base}/quarantine/00000000000000c1.1")
    attachments = page.inner_text("#attachments")
    assert "invoice.zip" in attachments
    assert "application/zip" in attachments
    assert hashlib.sha256(payload.getvalue()).hexdigest() in attachments
    assert "invoice.zip/invoice.pdf.exe" in attachments  # the archive's member
    links = page.inner_text("#links")
    assert "evil.example" in links
    assert "the text names another host" in links
    assert "Please verify." in page.inner_text("#text")
    assert "Subject" in page.inner_text("#headers")
    context.close()


def send_digests(console, sink, tmp_path, recipient):
    """`mailmoat quarantine digest` as cron would run it; the text of ``recipient``'s digest."""
    import email
    import email.policy
    import subprocess
    import sys

    base, settings = console
    config = write_config(tmp_path / "digest.toml", {
        "store": {"path": str(settings.store.path)},
        "backend": {"kind": "smtp", "host": "127.0.0.1", "port": sink[0].port},
        "server": {"accept_domains": ["example.test"], "hostname": "mx.test"},
        "web": {"secret_file": str(settings.web.secret_file), "public_url": base},
    })  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "quarantine", "digest", "--config", str(config),
         "--since", "1h"], capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [digest] = [m for m in sink[1].messages
                if b"held for you" in m.data and m.rcpts == [recipient]]  # fmt: skip
    text = email.message_from_bytes(digest.data, policy=email.policy.default)
    return done.stdout, text.get_body(("plain",)).get_content()


def test_a_mailbox_owner_releases_from_the_digest_link_without_an_account(console, browser, sink,
                                                                         tmp_path):  # fmt: skip
    """Held -> digest at the sink -> the link in headless Chromium -> the message arrives."""
    import re as regex

    _, settings = console
    _, handler = sink
    store = store_of(settings)
    held = Quarantine(settings.store.quarantine_dir, store)
    for n, subject in enumerate(("Quarterly figures", "Lottery win")):
        event_id = f"{0xB0 + n:016x}.1"
        raw = message(subject=subject, To="carol@example.test")
        event = SecurityEvent(id=event_id, kind="message", subject=subject, action="quarantine",
                              rcpts=("carol@example.test",))  # fmt: skip
        store.add(event, Retained(raw, None, None))
        held.hold(event_id, "a@sender.test", ("carol@example.test",), subject, 11.0, "score", raw)
    store.close()
    out, body = send_digests(console, sink, tmp_path, "carol@example.test")
    assert "carol@example.test: 2 held" in out
    section = body.split("Quarterly figures", 1)[1]
    release = regex.search(r"release: (\S+)", section).group(1)
    delete = regex.search(r"delete: +(\S+)", body.split("Lottery win", 1)[1]).group(1)
    # No account: the signed link is the credential. The page asks before it acts.
    context = browser.new_context()
    page = context.new_page()
    page.goto(release)
    assert "Held for carol@example.test" in page.inner_text("h1")
    before = len(handler.messages)
    page.click("#act")
    assert "Released" in page.inner_text("#done")
    deadline = time.monotonic() + 10
    while len(handler.messages) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    [arrived] = handler.messages[before:]
    assert b"Quarterly figures" in arrived.data
    assert arrived.rcpts == ["carol@example.test"]
    # Once only; a changed link is refused; the delete link deletes the other one.
    assert context.request.post(release).status == 410
    assert context.request.get(release.replace("/q/", "/q/x")).status == 403
    page.goto(delete)
    page.click("#act")
    assert "Deleted" in page.inner_text("#done")
    store = store_of(settings)
    assert store.current_label(f"{0xB0:016x}.1").author == "carol@example.test"
    assert store.current_label(f"{0xB1:016x}.1").label == "spam"
    trail = store.list(EventFilter(kind="audit", limit=500))
    audit = {(e.action, e.details.get("user")) for e in trail}
    assert ("user_release", "carol@example.test") in audit
    assert (
        Quarantine(settings.store.quarantine_dir, store).get(f"{0xB1:016x}.1").status == "deleted"
    )
    store.close()
    context.close()


def held_for(settings, rcpt, subjects, first, sender="a@sender.test"):
    """Hold one message per subject for ``rcpt``; their event ids."""
    store = store_of(settings)
    quarantine = Quarantine(settings.store.quarantine_dir, store)
    ids = []
    for n, subject in enumerate(subjects):
        event_id = f"{first + n:016x}.1"
        raw = message(subject=subject, To=rcpt)
        store.add(SecurityEvent(id=event_id, kind="message", subject=subject, action="quarantine",
                                rcpts=(rcpt,)), Retained(raw, None, None))  # fmt: skip
        quarantine.hold(event_id, sender, (rcpt,), subject, 11.0, "score", raw)
        ids.append(event_id)
    store.close()
    return ids


def arrivals(handler, before, count=1):
    deadline = time.monotonic() + 10
    while len(handler.messages) < before + count and time.monotonic() < deadline:
        time.sleep(0.05)
    return handler.messages[before:]


def test_a_mailbox_owner_allows_a_sender_and_signs_in_to_their_own_quarantine(
    console, browser, sink, tmp_path
):
    """The digest's "always allow" and sign-in links, the owner's page, and its limits."""
    import email
    import email.policy
    import re as regex

    base, settings = console
    _, handler = sink
    allowed_id, kept_id, page_id = held_for(
        settings, "dave@example.test", ("Newsletter", "Invoice", "Party"), 0xA0
    )
    [other_id] = held_for(settings, "erin@example.test", ("Not yours",), 0xA8)
    _, text = send_digests(console, sink, tmp_path, "dave@example.test")
    allow = regex.search(r"always allow sender: (\S+)", text.split("Newsletter", 1)[1]).group(1)
    signin = regex.search(r"All your held messages: (\S+)", text).group(1)

    # "Always allow": the sender goes on dave's list, and the message is released to him.
    context = browser.new_context()
    page = context.new_page()
    page.goto(allow)
    assert "Always allow a@sender.test" in page.inner_text("#act")
    before = len(handler.messages)
    page.click("#act")
    assert "a@sender.test is allowed" in page.inner_text("#done")
    [arrived] = arrivals(handler, before)
    assert b"Newsletter" in arrived.data
    assert arrived.rcpts == ["dave@example.test"]
    store = store_of(settings)
    assert store.sender_allows("dave@example.test") == {"dave@example.test": {"a@sender.test"}}
    assert store.current_label(allowed_id).label == "ham"

    # The sign-in link opens dave's own quarantine: his two held messages, not erin's.
    page.goto(signin)
    page.click("#signin")
    page.wait_for_url(f"{base}/my")
    assert "Held for dave@example.test" in page.inner_text("h1")
    held = page.inner_text("#held")
    assert "Invoice" in held
    assert "Party" in held
    assert "Newsletter" not in held
    assert "Not yours" not in held
    assert "a@sender.test" in page.inner_text("#allowed")
    # Release one from the page; it arrives, for dave only.
    before = len(handler.messages)
    page.click("#held tr:has-text('Party') button[value=release]")
    assert "Released" in page.inner_text("#done")
    [arrived] = arrivals(handler, before)
    assert b"Party" in arrived.data
    assert arrived.rcpts == ["dave@example.test"]
    # Another recipient's message, by id with a valid form token: refused, still held.
    csrf = page.get_attribute("input[name=csrf]", "value")
    form = {"csrf": csrf, "id": other_id, "what": "release"}
    refused = context.request.post(f"{base}/my/act", form=form)
    assert refused.status == 404
    # Without the form token nothing happens.
    assert context.request.post(f"{base}/my/act",
                                form={"id": kept_id, "what": "delete"}).status == 403  # fmt: skip
    # A mailbox session is not a staff session: the console's pages send it to the login.
    page.goto(f"{base}/events")
    assert page.url.startswith(f"{base}/login")
    page.goto(f"{base}/my")
    # Forget the sender, then sign out: /my asks for an address again.
    page.click("#allowed button[value=forget]")
    assert "no longer allowed" in page.inner_text("#done")
    assert store.sender_allows("dave@example.test") == {}
    page.click("#signout")
    assert page.locator("#address").count() == 1
    # The sign-in link worked once.
    assert context.request.post(signin).status == 410
    quarantine = Quarantine(settings.store.quarantine_dir, store)
    assert quarantine.get(other_id).status == "held"
    assert quarantine.get(kept_id).status == "held"
    assert quarantine.get(page_id).status == "released"
    audit = {(e.action, e.details.get("user"), e.details.get("via"))
             for e in store.list(EventFilter(kind="audit", limit=500))}  # fmt: skip
    assert ("user_allow", "dave@example.test", "digest link") in audit
    assert ("user_release", "dave@example.test", "mailbox page") in audit
    store.close()

    # Asking on /my mails a sign-in link to an address with held mail; the same answer for
    # one without, and no mail to it.
    before = len(handler.messages)
    for address in ("erin@example.test", "nobody@example.test"):
        page.goto(f"{base}/my")
        page.fill("#address", address)
        page.click("#send")
        assert "a sign-in link is on its way" in page.inner_text("#sent")
    [mailed] = arrivals(handler, before)
    assert mailed.rcpts == ["erin@example.test"]
    mailed_text = email.message_from_bytes(mailed.data, policy=email.policy.default)
    body = mailed_text.get_body(("plain",)).get_content()
    link = regex.search(r"(http://\S+/my/signin/\S+)", body).group(1)
    page.goto(link)
    page.click("#signin")
    assert "Not yours" in page.inner_text("#held")
    context.close()
