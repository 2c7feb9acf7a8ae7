"""The fault proxy itself: control routes, seeded fault rates, and its command line."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from extract.testing.fault_proxy import FAULT_KINDS, FaultProxy


def _status(url: str) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def test_seeded_fault_rate_is_reproducible(proxy: FaultProxy) -> None:
    url = proxy.base_url + "/chat/nothing"  # upstream answers 404 at once
    runs = []
    for _ in range(2):
        proxy.reset(rate=0.5, seed=3, faults=["503"], retry_after=0)
        runs.append([_status(url) == 503 for _ in range(12)])
    assert runs[0] == runs[1]
    assert 0 < sum(runs[0]) < 12
    assert proxy.stats()["faults"] == {"503": sum(runs[1])}


def test_queued_faults_come_first_and_in_order(proxy: FaultProxy) -> None:
    proxy.configure(next=["429", "500", "403"], retry_after=0)
    url = proxy.base_url + "/chat/nothing"  # upstream answers 404 at once
    assert [_status(url) for _ in range(3)] == [429, 500, 403]
    stats = proxy.stats()
    assert stats["seen"] == 3 and stats["forwarded"] == 0


def test_requests_outside_the_fault_path_pass(proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, faults=["500"])
    with urllib.request.urlopen(proxy.base_url + "/models", timeout=10) as resp:
        assert resp.status == 200
    assert proxy.stats()["forwarded"] == 1


def test_bad_config_is_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        proxy.configure(next=["teapot"])
    with pytest.raises(ValueError, match="rate"):
        proxy.configure(rate=2.0)
    with pytest.raises(ValueError, match="unknown strip field"):
        proxy.configure(strip=["messages"])
    with pytest.raises(ValueError, match="no_such_field"):
        proxy.configure(no_such_field=1)


def test_command_line() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "extract.testing.fault_proxy", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "--upstream" in help_text and "--rate" in help_text
    bad = subprocess.run(
        [sys.executable, "-m", "extract.testing.fault_proxy", "--upstream", "http://127.0.0.1:9",
         "--faults", "429,teapot"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "teapot" in bad.stderr
    assert set(FAULT_KINDS) >= {"429", "500", "503", "delay", "cut", "malformed", "truncated", "content_type"}
