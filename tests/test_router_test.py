"""`router test` as a tracking engineer uses it: write cases, see readable failures,
update goldens, hand CI a JUnit file."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

from click.testing import CliRunner

from router.cli import main

CASES = """\
description: Order flow checks
defaults:
  source: segment
  received_at: "2026-11-20T15:00:00Z"
cases:
  - name: purchase goes to meta as Purchase
    input:
      type: track
      event: Order Completed
      messageId: t-1
      userId: u-1
      context: {traits: {email: Jane@Example.com}, consent: {categoryPreferences: {Advertising: true}}}
      properties: {order_id: "o-1", revenue: 10, currency: eur}
    destinations: [meta, tiktok]
    expect:
      status: accepted
      event: {event_name: purchase, custom_data: {currency: EUR, order_id: "o-1"}}
      destinations:
        meta:
          sent: true
          platform_event: Purchase
          assert:
            - "body.data[0].custom_data.currency == 'EUR'"
            - "contains(url, 'access_token=')"
  - name: a second half of the same order is a duplicate
    prior:
      - source: segment
        input: {type: track, event: Order Completed, messageId: t-2a, userId: u-2,
                properties: {order_id: "o-2", revenue: 5, currency: usd}}
    input: {type: track, event: Order Completed, messageId: t-2b, userId: u-2,
            properties: {order_id: "o-2", revenue: 5, currency: usd}}
    expect:
      status: duplicate
      reason: "purchase:order_id=o-2"
  - name: identify enriches a later anonymous event
    prior:
      - source: segment
        input: {type: identify, messageId: t-3a, anonymousId: a-3, traits: {email: known@x.test}}
    input: {type: track, event: Product Viewed, messageId: t-3b, anonymousId: a-3,
            properties: {product_id: P, price: 1, currency: USD}}
    expect:
      event: {user_data: {email_sha256: "0d6b1bfc7fd8e5b7ad8ca42b8cf20d5a0d17de1781d84b8e0b32ba0d8f8c1d4b"}}
"""


def write(tmp_path: Path, text: str = CASES) -> Path:
    path = tmp_path / "orders.yaml"
    path.write_text(text)
    return path


def invoke(repo_root: Path, *args: str) -> object:
    return CliRunner().invoke(main, ["test", "--config-dir", str(repo_root), *args])


def test_update_writes_goldens_then_cases_pass(repo_root: Path, tmp_path: Path) -> None:
    import hashlib

    expected_hash = hashlib.sha256(b"known@x.test").hexdigest()
    path = write(tmp_path, CASES.replace(
        "0d6b1bfc7fd8e5b7ad8ca42b8cf20d5a0d17de1781d84b8e0b32ba0d8f8c1d4b", expected_hash))
    first = invoke(repo_root, str(path))
    assert first.exit_code == 1 and "no golden output for this case" in first.output
    updated = invoke(repo_root, str(path), "--update")
    assert updated.exit_code == 0, updated.output
    golden = json.loads(path.with_name("orders.golden.json").read_text())
    assert set(golden) == {"purchase goes to meta as Purchase",
                           "a second half of the same order is a duplicate",
                           "identify enriches a later anonymous event"}
    request = golden["purchase goes to meta as Purchase"][0]["destinations"]["meta"]["request"]
    assert request["body"]["data"][0]["event_name"] == "Purchase"
    assert golden["a second half of the same order is a duplicate"][0]["status"] == "duplicate"
    again = invoke(repo_root, str(path))
    assert again.exit_code == 0 and "3 passed, 0 failed" in again.output


def test_failures_name_the_case_line_and_show_a_diff(repo_root: Path, tmp_path: Path) -> None:
    path = write(tmp_path)
    invoke(repo_root, str(path), "--update")
    broken = CASES.replace("platform_event: Purchase", "platform_event: Buy").replace(
        "currency: eur}", "currency: gbp}")
    path.write_text(broken)
    result = invoke(repo_root, str(path))
    assert result.exit_code == 1
    line = next(i for i, text in enumerate(broken.splitlines(), 1)
                if "purchase goes to meta" in text)
    assert f"FAIL {path}:{line} purchase goes to meta as Purchase" in result.output \
        or f"orders.yaml:{line} purchase goes to meta as Purchase" in result.output
    assert "destinations.meta.platform_event: expected 'Buy', got 'Purchase'" in result.output
    assert "event.custom_data.currency: expected \"EUR\", got \"GBP\"" in result.output
    assert "output differs from the golden file" in result.output
    assert "-" in result.output and '"GBP"' in result.output  # a unified diff
    # the identity case's hand assertion fails on the placeholder hash
    assert "identify enriches a later anonymous event" in result.output


def test_junit_and_file_errors(repo_root: Path, tmp_path: Path) -> None:
    path = write(tmp_path)
    bad = tmp_path / "broken.yaml"
    bad.write_text("cases:\n  - name: x\n    source: segment\n    input: {}\n    expekt: {}\n")
    junit = tmp_path / "report.xml"
    result = invoke(repo_root, str(path), str(bad), "--junit", str(junit))
    assert result.exit_code == 1
    assert "broken.yaml:5:5: error: unknown key 'expekt'" in result.output
    assert "did you mean 'expect'" in result.output
    tree = ElementTree.parse(junit)
    suites = {s.get("name"): s for s in tree.getroot()}
    assert int(suites[str(path)].get("tests") or 0) == 3 or \
        any(int(s.get("tests") or 0) == 3 for s in suites.values())
    assert any(s.get("errors") == "1" for s in suites.values())


def test_shipped_config_tests_pass(repo_root: Path) -> None:
    result = invoke(repo_root)
    assert result.exit_code == 0, result.output[-3000:]
    assert " 0 failed" in result.output
