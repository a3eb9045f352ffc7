"""Hot reload: atomic on success, harmless on a broken edit, by SIGHUP or --watch."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import requests

from tests.service.conftest import Service, make_config_dir, start_service


def config_hash(service: Service) -> str:
    return service.admin("/admin/config").json()["config_hash"]


def send(service: Service, event: str, message_id: str) -> dict[str, object]:
    response = requests.post(service.url + "/v1/track?wait=true", auth=("demo-write-key", ""),
                             timeout=10,
                             data=json.dumps({"type": "track", "event": event, "userId": "u",
                                              "messageId": message_id}),
                             headers={"Content-Type": "application/json"})
    return response.json()["results"][0]


def current_version(config_dir: Path) -> int:
    text = (config_dir / "mappings" / "segment.yaml").read_text()
    return int(re.search(r"^version: (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]


def add_mapping(config_dir: Path, version: int) -> None:
    path = config_dir / "mappings" / "segment.yaml"
    text = path.read_text()
    text = re.sub(r"^version: \d+$", f"version: {version}", text, count=1, flags=re.M)
    text += "  Quote Requested:\n    canonical: lead\n"
    path.write_text(text)


def test_sighup_swaps_a_valid_config_and_survives_a_broken_one(tmp_path: Path) -> None:
    config_dir = make_config_dir(tmp_path / "config")
    svc = start_service(config_dir, tmp_path / "r.db", tmp_path / "serve.log")
    try:
        before = config_hash(svc)
        old = current_version(config_dir)
        assert send(svc, "Quote Requested", "q-1")["status"] == "unmapped"
        add_mapping(config_dir, old + 1)
        svc.process.send_signal(signal.SIGHUP)
        after = svc.wait_for(lambda: (h := config_hash(svc)) != before and h, what="a reload")
        assert svc.admin("/admin/config").json()["mappings"]["segment"] == f"segment@{old + 1}"
        assert send(svc, "Quote Requested", "q-2")["status"] == "accepted"
        assert svc.event("q-2")["event"]["mapping_version"] == f"segment@{old + 1}"
        assert svc.event("q-1")["event"]["mapping_version"] == f"segment@{old}"

        path = config_dir / "mappings" / "segment.yaml"
        path.write_text(path.read_text().replace("canonical: lead\n", "canonical: leed\n"))
        svc.process.send_signal(signal.SIGHUP)
        svc.wait_for(lambda: "is invalid" in svc.log.read_text(), what="the error log")
        log = svc.log.read_text()
        assert "segment.yaml:" in log and "unknown canonical event 'leed'" in log
        assert config_hash(svc) == after  # the running config stayed
        assert send(svc, "Quote Requested", "q-3")["status"] == "accepted"
    finally:
        svc.process.terminate()
        svc.process.wait(30)


def test_watch_reloads_on_file_change(tmp_path: Path) -> None:
    config_dir = make_config_dir(tmp_path / "config")
    svc = start_service(config_dir, tmp_path / "w.db", tmp_path / "serve.log", ("--watch",))
    try:
        before = config_hash(svc)
        time.sleep(1.1)  # a distinct mtime from the copy
        add_mapping(config_dir, current_version(config_dir) + 1)
        svc.wait_for(lambda: config_hash(svc) != before, what="a watched reload")
        assert send(svc, "Quote Requested", "w-1")["status"] == "accepted"
    finally:
        svc.process.terminate()
        svc.process.wait(30)
