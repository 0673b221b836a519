"""An installable package: a wheel built from the checkout, installed in a new venv outside
it, starts from what it carries (config, scores, starter rules, the shipped model)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from gateway.config import PROJECT_ROOT

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: Lunch\r\n"
    b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <lunch@sender.test>\r\n\r\n"
    b"Shall we meet at noon?\r\n"
)


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


def test_the_wheel_carries_the_model_named_by_current():
    """pyproject.toml names the model directory; a newly promoted model must be named too."""
    current = (PROJECT_ROOT / "models" / "CURRENT").read_text().strip()
    assert f'"share/mailmoat/models/{current}"' in (PROJECT_ROOT / "pyproject.toml").read_text()


def test_a_wheel_installed_outside_the_checkout_inits_and_scans(tmp_path):
    wheels = tmp_path / "wheels"
    built = run(sys.executable, "-m", "pip", "wheel", PROJECT_ROOT, "--no-deps", "-q",
                "-w", wheels, cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.glob("mailmoat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("share/mailmoat/config/scores.toml") for n in names)
    assert any(n.endswith("share/mailmoat/config/scores-hand.toml") for n in names)
    assert any(n.endswith("model.joblib") for n in names)
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    # The dependencies are the test environment's (no download); the package is the wheel's.
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                    cwd=tmp_path).stdout.strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-index", "-q", wheel, cwd=tmp_path)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    home = tmp_path / "elsewhere"
    home.mkdir()
    located = run(python, "-c", "import gateway.config as c; print(c.SHIPPED)", cwd=home)
    assert located.stdout.strip() == str(venv / "share" / "mailmoat"), located.stderr
    mailmoat = [python, "-m", "gateway"]
    init = run(*mailmoat, "init", "--prefix", home / "etc", "--state", home / "state", cwd=home)
    assert init.returncode == 0, init.stderr
    assert (home / "state" / "models" / "CURRENT").read_text().strip()
    assert (home / "etc" / "rules" / "allow-deny.yaml").exists()
    assert (home / "etc" / "scores-hand.toml").exists()
    config = home / "etc" / "mailmoat.toml"
    checked = run(*mailmoat, "config", "check", "--config", config, cwd=home)
    assert checked.returncode == 0, checked.stderr
    assert "rules    23" in checked.stdout
    assert "model    spamassassin-" in checked.stdout
    (home / "lunch.eml").write_bytes(MESSAGE)
    scanned = run(*mailmoat, "scan", "--config", config, "--json", home / "lunch.eml", cwd=home)
    assert scanned.returncode == 0, scanned.stderr
    assert '"ML_HAM"' in scanned.stdout
    # A second init does not overwrite what the site edited.
    again = run(*mailmoat, "init", "--prefix", home / "etc", "--state", home / "state", cwd=home)
    assert again.returncode == 1
    assert "exists" in again.stderr


def test_the_systemd_units_verify(tmp_path):
    """systemd-analyze checks the shipped units offline (no running systemd needed)."""
    import shutil

    import pytest

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (Debian's systemd)")
    mailmoat = Path(sys.executable).with_name("mailmoat")  # the units name /usr/local/bin
    units = []
    for unit in sorted((PROJECT_ROOT / "config" / "systemd").glob("mailmoat*")):
        text = unit.read_text().replace("/usr/local/bin/mailmoat", str(mailmoat))
        (tmp_path / unit.name).write_text(text)
        units.append(tmp_path / unit.name)
    names = [u.name for u in units]
    assert names == ["mailmoat-digest.service", "mailmoat-digest.timer", "mailmoat-report.service",
                     "mailmoat-report.timer", "mailmoat-web.service", "mailmoat.service",
                     "mailmoat.socket"]  # fmt: skip
    verified = run(analyze, "verify", *units, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    exposure = run(analyze, "security", "--offline=true", units[5], cwd=tmp_path)
    level = float(exposure.stdout.rsplit("exposure level for mailmoat.service:", 1)[1].split()[0])
    assert level < 5.0, exposure.stdout  # systemd rates below 5 "OK"
