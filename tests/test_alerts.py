"""The shipped Prometheus alert rules: valid, unit-tested, and about metrics that exist.

promtool is Debian's `prometheus` package (.ci/run installs it). The rules name metrics; a
real gateway (with clamd, so the signature age is there) is scraped to show each exists.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from gateway.config import PROJECT_ROOT, ReportConfig, parse_hostport
from gateway.metrics import serve_metrics
from gateway.report import daily, fired_alerts
from tests.conftest import free_port, message, running_gateway, send_message
from tests.test_metrics import get

RULES = PROJECT_ROOT / "config" / "prometheus"
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="needs promtool (Debian's prometheus)")
PROMETHEUS = shutil.which("prometheus") or "prometheus"
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs Debian's prometheus"
)


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


def prometheus_query(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())["data"]["result"]
    except OSError:
        return []  # not up yet


async def until(port: int, query: str, seconds: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(prometheus_query, port, query)
        if result:
            return result
        await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus never answered {query!r}")


@pytest.fixture
def prometheus(tmp_path):
    """Debian's Prometheus, evaluating the shipped rules every second, scraping a gateway's
    metrics on a port chosen here: (metrics port, Prometheus port)."""
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{RULES / 'mailmoat.rules.yml'}]\n"
        "scrape_configs:\n"
        "  - job_name: mailmoat\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    with (tmp_path / "prometheus.log").open("w") as log:
        server = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            yield metrics_port, prom_port
        finally:
            server.terminate()
            server.wait(30)


@needs_prometheus
async def test_the_daily_report_lists_the_alerts_that_fired(sink, config_factory, prometheus):
    """Debian's Prometheus scrapes a real gateway with the shipped rules; a reload is refused;
    MailmoatReloadFailed fires; the report (reading Prometheus) names it."""
    config = config_factory(sink.port)
    metrics_port, prom_port = prometheus
    async with running_gateway(config) as gw:
        server = await serve_metrics(gw.gateway.metrics, gw.gateway.readiness, "127.0.0.1",
                                     metrics_port)  # fmt: skip
        try:
            # Scraped once with no failure, then a reload is refused (a broken config).
            await until(prom_port, 'mailmoat_reloads_total{result="failed"} == 0')
            config.write_text("[server\n")
            assert not await gw.gateway.reload()
            fired = await until(prom_port, 'ALERTS{alertname="MailmoatReloadFailed"}')
        finally:
            server.close()
    assert fired[0]["metric"]["alertstate"] == "firing"
    report_config = ReportConfig(prometheus_url=f"http://127.0.0.1:{prom_port}")
    settings = gw.gateway.settings.model_copy(update={"report": report_config})
    report = await asyncio.to_thread(daily, settings)
    assert "Alerts that fired\n  MailmoatReloadFailed (" in report.text
    assert "severity=ticket" in report.text
    assert "MailmoatReloadFailed" in report.html


def test_the_report_says_when_it_cannot_know_the_alerts(tmp_path):
    now = time.time()
    assert "set [report] prometheus_url" in fired_alerts("", 1.0, now)
    closed = f"http://127.0.0.1:{free_port()}"
    answer = fired_alerts(closed, 1.0, now)
    assert isinstance(answer, str)
    assert answer.startswith(f"not known: Prometheus at {closed} did not answer")
