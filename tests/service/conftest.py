"""One real `router serve` process for the whole service test session.

It runs on a copy of the shipped config dir plus a second account (two environments,
an ad destination requiring consent) and a trusted proxy header, so each test can act
as its own client IP. Tests talk to it over loopback HTTP, with the official SDKs
where they exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "service"
ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_config_dir(target: Path, sections: dict[str, dict[str, Any]] | None = None,
                    **router_overrides: Any) -> Path:
    """A copy of the shipped config plus the test account; `router_overrides` go into
    router.yaml's `server:`, `sections` are merged into its other top-level sections."""
    for sub in ("configs", "mappings", "destinations.d"):
        shutil.copytree(REPO / sub, target / sub)
    shutil.copy(FIXTURES / "acme.yaml", target / "configs" / "accounts" / "acme.yaml")
    shutil.copy(FIXTURES / "adsink.yaml", target / "destinations.d" / "adsink.yaml")
    shutil.copy(FIXTURES / "hdrsink.yaml", target / "destinations.d" / "hdrsink.yaml")
    canonical = target / "mappings" / "canonical.yaml"
    text = canonical.read_text()
    start = text.index("\n  lead:\n")
    marker = "    dedup_keys: []\n"
    at = text.index(marker, start) + len(marker)
    text = text[:at] + "    hold: 2\n" + text[at:]  # pixel+server lead halves
    text = text.replace("    dedup_keys: [order_id]\n    hold: 30\n",
                        "    dedup_keys: [order_id]\n    hold: 2\n")  # purchase halves, shortened
    canonical.write_text(text)
    awin = target / "destinations.d" / "awin.yaml"  # its 30 s send delay, shortened
    awin.write_text(awin.read_text().replace("delay_seconds: 30", "delay_seconds: 1"))
    router_yaml = target / "configs" / "router.yaml"
    data = yaml.safe_load(router_yaml.read_text())
    data["server"]["trusted_proxy_header"] = "X-Forwarded-For"
    data["server"]["max_batch_events"] = 50
    data["server"]["pixel_rate_limit_per_minute"] = 120
    for key, value in router_overrides.items():
        data["server"][key] = value
    for section, values in (sections or {}).items():
        data.setdefault(section, {}).update(values)
    router_yaml.write_text(yaml.safe_dump(data))
    return target


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    sink: str = ""
    db: Path | None = None

    def sandbox(self, path: str, method: str = "GET", **body: Any) -> Any:
        response = requests.request(method, self.sink + path, json=body or None, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def fault(self, destination: str, **spec: Any) -> None:
        self.sandbox("/_sandbox/faults", "POST", destination=destination, **spec)

    def received(self, destination: str) -> list[dict[str, Any]]:
        return self.sandbox(f"/_sandbox/requests?destination={destination}")["requests"]

    def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def deliveries(self, event_id: str) -> dict[str, dict[str, Any]]:
        return {d["destination"]: d for d in self.event(event_id)["deliveries"]}

    def admin(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.url + path, params=params, timeout=10,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def event(self, event_id: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        """The event's story; the processor decides shortly after the acknowledgement,
        so a lookup right after sending waits for it (up to `timeout`)."""
        deadline = time.time() + timeout
        while True:
            response = self.admin(f"/admin/events/{event_id}", **params)
            if response.status_code != 404 or time.time() > deadline:
                break
            time.sleep(0.05)
        assert response.status_code == 200, response.text
        return response.json()


def _router_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("router")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "router.cli"]


def _env(sink_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DEMO_", "ACME_", "ROUTER_ALERT_"))}
    env["ROUTER_ADMIN_TOKEN"] = ADMIN_TOKEN
    env["DEMO_SINK_URL"] = sink_url
    env["ROUTER_RETRY_BASE_SECONDS"] = "0.3"
    env.update(extra or {})
    return env


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"router exited: {log.read_text()}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"router did not start: {log.read_text()}")


def start_service(config_dir: Path, db: Path, log: Path,
                  extra_args: tuple[str, ...] = (), sink_url: str | None = None,
                  extra_env: dict[str, str] | None = None,
                  sink_port: int | None = None) -> Service:
    """`router serve` on its own port; with its embedded sandbox (on `sink_port` if given)
    unless `sink_url` names a sandbox running apart (one that outlives this process, for
    crash tests)."""
    port, sink_port = free_port(), sink_port or free_port()
    sink = sink_url or f"http://127.0.0.1:{sink_port}"
    sandbox = () if sink_url else ("--sandbox", "--sandbox-port", str(sink_port))
    handle = log.open("ab")
    process = subprocess.Popen(
        [*_router_cmd(), "serve", "--config-dir", str(config_dir), "--store",
         f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), *sandbox, *extra_args],
        env=_env(sink, extra_env), stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url + "/healthz", process, log)
    return Service(url, process, log, sink, db)


def start_sandbox(config_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [*_router_cmd(), "sandbox", "--config-dir", str(config_dir), "--port", str(port)],
        env=_env(f"http://127.0.0.1:{port}"), stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url + "/_sandbox/health", process, log)
    return process, url


def start_worker(config_dir: Path, db: Path, log: Path, roles: str,
                 sink_url: str) -> subprocess.Popen[bytes]:
    """`router worker --role ...` (no HTTP) beside a service on the same store."""
    return subprocess.Popen(
        [*_router_cmd(), "worker", "--config-dir", str(config_dir), "--store",
         f"sqlite:///{db}", "--role", roles], env=_env(sink_url), stdout=log.open("ab"),
        stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("service")
    config_dir = make_config_dir(root / "config")
    svc = start_service(config_dir, root / "router.db", root / "serve.log")
    yield svc
    svc.process.terminate()
    try:
        svc.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        svc.process.kill()


# --- signing helpers (what real senders compute) ---------------------------------------

def router_signature(secret: str, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    ts = timestamp or str(int(time.time()))
    digest = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Router-Timestamp": ts, "X-Router-Signature": f"sha256={digest}"}


def segment_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def shopify_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


_ip_counter = iter(range(1, 1_000_000))


def fresh_ip() -> str:
    """A client address of its own (a header value from the documentation range, never
    contacted), so per-client rate limits never leak between tests."""
    n = next(_ip_counter)
    return f"198.51.{(n >> 8) & 255}.{n & 255}"
