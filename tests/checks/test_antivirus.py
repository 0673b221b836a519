"""The antivirus check against a real clamd: detections, and every failure policy."""

from __future__ import annotations

import pytest

from gateway.clients.clamd import ClamdAddress, ClamdClient, ClamdError, parse_address, parse_answer
from gateway.types import Action
from tests.checks.golden import offline_settings, scan_bytes
from tests.clamav import EICAR, HASH_SAMPLE, ClamdProcess
from tests.messages import plain, with_attachments, zip_bytes


def av(address: str, on_error: str = "tempfail", **clamd: object):
    """Settings with the antivirus check on: ``clamd`` keys go to [antivirus]."""
    return offline_settings({"address": address, **clamd}, antivirus={"on_error": on_error})


def virus(verdict):
    [found] = [s for s in verdict.symbols if s.name == "VIRUS_FOUND"]
    return found.details["signature"]


async def test_clean_message(clamd):
    verdict = await scan_bytes(plain("Nothing to see here.\n"), av(clamd.address))
    assert "AV_CLEAN" in verdict.symbol_names
    assert verdict.action is Action.ACCEPT


async def test_eicar_plain_in_the_body(clamd):
    verdict = await scan_bytes(plain(EICAR.decode() + "\n"), av(clamd.address))
    assert "EICAR" in virus(verdict)
    assert verdict.action is Action.REJECT
    assert verdict.reply_text == f"Virus found: {virus(verdict)}"


async def test_eicar_as_base64_attachment(clamd):
    raw = with_attachments(("eicar.com", EICAR, "application/octet-stream"))
    assert EICAR not in raw  # only the decoded attachment holds it
    verdict = await scan_bytes(raw, av(clamd.address))
    assert "EICAR" in virus(verdict)


async def test_eicar_inside_a_zip(clamd):
    raw = with_attachments(("files.zip", zip_bytes({"eicar.com": EICAR}), "application/zip"))
    assert "EICAR" in virus(await scan_bytes(raw, av(clamd.address)))


async def test_eicar_inside_a_zip_inside_a_zip(clamd):
    inner = zip_bytes({"eicar.com": EICAR})
    outer = zip_bytes({"inner.zip": inner, "readme.txt": b"hello"})
    raw = with_attachments(("outer.zip", outer, "application/zip"))
    assert "EICAR" in virus(await scan_bytes(raw, av(clamd.address)))


async def test_project_hash_signature(clamd):
    raw = with_attachments(("sample.bin", HASH_SAMPLE, "application/octet-stream"))
    assert virus(await scan_bytes(raw, av(clamd.address))) == "Mailmoat.Test.HashSample.UNOFFICIAL"


@pytest.fixture
def own_clamd(tmp_path):
    """A clamd this test may break."""
    process = ClamdProcess(tmp_path / "clamd", stream_max="1M").start()
    yield process
    process.resume()
    process.stop()


@pytest.mark.parametrize(
    ("on_error", "action"),
    [("tempfail", Action.TEMPFAIL), ("accept", Action.ACCEPT), ("quarantine", Action.QUARANTINE)],
)
async def test_clamd_stopped_mid_run_follows_the_failure_policy(own_clamd, on_error, action):
    settings = av(own_clamd.address, on_error=on_error)
    assert "AV_CLEAN" in (await scan_bytes(plain("before"), settings)).symbol_names
    own_clamd.kill()
    verdict = await scan_bytes(plain("after"), settings)
    [fail] = [s for s in verdict.symbols if s.name == "AV_FAIL"]
    assert "clamd at unix:" in fail.details["error"]
    assert fail.score == 0
    assert verdict.action is action


async def test_recovers_automatically_when_clamd_is_back(own_clamd):
    settings = av(own_clamd.address)
    own_clamd.stop()
    assert (await scan_bytes(plain("down"), settings)).action is Action.TEMPFAIL
    own_clamd.start()
    assert (await scan_bytes(plain("up"), settings)).action is Action.ACCEPT


async def test_clamd_slow_past_the_timeout(own_clamd):
    own_clamd.pause()
    verdict = await scan_bytes(plain("slow"), av(own_clamd.address, timeout=0.5))
    [fail] = [s for s in verdict.symbols if s.name == "AV_FAIL"]
    assert "timed out" in fail.details["error"]
    assert verdict.action is Action.TEMPFAIL


async def test_message_over_clamd_stream_limit_is_not_passed_unscanned(own_clamd):
    big = plain("x" * 76 + "\n") + (b"y" * 76 + b"\n") * 20000  # 1.5 MB > StreamMaxLength 1M
    verdict = await scan_bytes(big, av(own_clamd.address))
    [fail] = [s for s in verdict.symbols if s.name == "AV_FAIL"]
    # clamd either says "size limit exceeded" or hangs up mid-stream; both are AV_FAIL.
    assert "size limit" in fail.details["error"] or "StreamMaxLength" in fail.details["error"]
    assert verdict.action is Action.TEMPFAIL


async def test_message_over_max_scan_size_is_not_sent(clamd):
    verdict = await scan_bytes(plain("x" * 5000), av(clamd.address, max_scan_size=1000))
    [fail] = [s for s in verdict.symbols if s.name == "AV_FAIL"]
    assert "exceeds max_scan_size" in fail.details["error"]


async def test_client_ping_and_version(clamd):
    client = ClamdClient(clamd.address)
    assert await client.ping()
    assert "ClamAV" in await client.version()


async def test_client_over_tcp_by_address_and_by_name(tmp_path):
    """clamd on TCP: an IP address is connected to directly, a name is looked up."""
    from tests.conftest import free_port

    port = free_port()
    server = ClamdProcess(tmp_path, extra=f"TCPSocket {port}\nTCPAddr 127.0.0.1\n").start()
    try:
        for address in (f"127.0.0.1:{port}", f"localhost:{port}"):
            client = ClamdClient(address)
            assert (client.literal is None) == address.startswith("localhost")
            found = await client.scan(EICAR)
            assert found.infected, address
            assert "EICAR" in found.signature
            assert not (await client.scan(b"clean")).infected
    finally:
        server.stop()


async def test_client_over_tcp_to_a_closed_port():
    from tests.conftest import free_port

    client = ClamdClient(f"127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ClamdError, match=r"clamd at 127\.0\.0\.1"):
        await client.scan(b"x")


def test_addresses_and_answers():
    assert parse_address("unix:/run/clamd.sock").path == "/run/clamd.sock"
    assert parse_address("10.0.0.1") == ClamdAddress(host="10.0.0.1", port=3310)
    assert parse_address("[::1]:3311") == ClamdAddress(host="::1", port=3311)
    with pytest.raises(ValueError, match="empty socket path"):
        parse_address("unix:")
    assert parse_answer("stream: OK").infected is False
    assert parse_answer("stream: Win.Test.EICAR_HDB-1 FOUND").signature == "Win.Test.EICAR_HDB-1"
    with pytest.raises(ClamdError, match="error"):
        parse_answer("INSTREAM size limit exceeded. ERROR")
    with pytest.raises(ClamdError, match="unexpected"):
        parse_answer("stream: ???")
