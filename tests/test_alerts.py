"""The shipped Prometheus alert rules: valid, unit-tested, and about metrics that exist.

promtool is Debian's `prometheus` package (.ci/run installs it). The rules name metrics; a
real gateway (with clamd, so the signature age is there) is scraped to show each exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from gateway.config import PROJECT_ROOT, parse_hostport
from gateway.metrics import serve_metrics
from tests.conftest import free_port, message, running_gateway, send_message
from tests.test_metrics import get

RULES = PROJECT_ROOT / "config" / "prometheus"
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="needs promtool (Debian's prometheus)")


@needs_promtool
@pytest.mark.parametrize(
    "command",
    [["check", "rules", "mailmoat.rules.yml"], ["test", "rules", "mailmoat.rules.test.yml"]],
)
def test_promtool_accepts_the_rules_and_their_tests(command):
    done = subprocess.run([promtool, *command], cwd=RULES, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


async def test_every_metric_the_rules_name_is_served(sink, config_factory, clamd):
    named = set(re.findall(r"\bmailmoat_[a-z_]+", (RULES / "mailmoat.rules.yml").read_text()))
    config = config_factory(
        sink.port, antivirus={"address": clamd.address}, checks__antivirus={"enabled": True}
    )
    async with running_gateway(config) as gw:
        await send_message(gw.port, message())
        await gw.gateway.reload()
        port = free_port()
        host, _ = parse_hostport(f"127.0.0.1:{port}")
        server = await serve_metrics(gw.gateway.metrics, gw.gateway.readiness, host, port)
        try:
            status, body = await get(port, "/metrics")
        finally:
            server.close()
    assert status == 200
    served = set(re.findall(r"^# TYPE (mailmoat_[a-z_]+)", body, re.M))
    served |= {f"{name}_total" for name in served}
    assert named <= served, f"named by the rules, not served: {sorted(named - served)}"
    assert 'mailmoat_up{part="backend"} 1.0' in body
    assert 'mailmoat_reloads_total{result="ok"} 1.0' in body
    # The test clamd loads only the project's signatures: its VERSION has no database date.
    assert re.search(r"^mailmoat_antivirus_signatures_timestamp_seconds 0\.0$", body, re.M)


def test_the_signature_date_is_read_from_clamds_version():
    from gateway.service import signatures_time

    assert signatures_time("ClamAV 1.0.7/27466/Tue Nov 26 09:34:21 2024") == 1732613661.0
    assert signatures_time("ClamAV 1.4.6") is None  # no official database loaded
