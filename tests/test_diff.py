"""`router diff`: a semantic report, impact on real payloads, and CI exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.cli import main

CORPUS = Path(__file__).parent / "fixtures" / "corpus"


def copy_config(repo_root: Path, target: Path) -> Path:
    for sub in ("configs", "mappings", "destinations.d"):
        shutil.copytree(repo_root / sub, target / sub)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def bump(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("version:"):
            value = line.split(":", 1)[1].strip()
            lines[i] = f"version: {int(value) + 1}\n"
            break
    path.write_text("".join(lines))


@pytest.fixture
def pair(repo_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    return copy_config(repo_root, tmp_path / "old"), copy_config(repo_root, tmp_path / "new")


def run(*args: str) -> object:
    return CliRunner().invoke(main, ["diff", *args])


def test_no_change_is_reported_as_none(pair: tuple[Path, Path]) -> None:
    old, new = pair
    result = run(str(old), str(new))
    assert result.exit_code == 0 and "No semantic changes." in result.output


def test_semantic_findings_and_impact(pair: tuple[Path, Path]) -> None:
    old, new = pair
    seg = new / "mappings" / "segment.yaml"
    edit(seg, "  Lead Generated:\n    canonical: lead", "  Lead Generated:\n    canonical: contact")
    bump(seg)
    meta = new / "destinations.d" / "meta.yaml"
    edit(meta, "  add_to_cart: AddToCart\n", "")
    bump(meta)
    result = run(str(old), str(new), "--corpus", str(CORPUS))
    out = result.output
    assert result.exit_code == 1  # breaking changes fail by default
    assert "BREAKING: 'Lead Generated' re-targeted: lead -> contact" in out
    assert "BREAKING: add_to_cart no longer sent (was 'AddToCart')" in out
    assert "Impact (3 events replayed" in out
    report = json.loads(run(str(old), str(new), "--corpus", str(CORPUS), "--format",
                            "json").output)
    impact = report["impact"]
    assert impact["meta"]["no_longer_sent"] == 1  # the Product Added in the corpus
    assert impact["meta"]["sent_differently"] >= 1  # the lead is now a Contact
    assert any("Contact" in c for e in impact["meta"]["examples"] for c in e["changes"])
    assert impact["ga4"]["unchanged"] >= 1
    md = run(str(old), str(new), "--corpus", str(CORPUS), "--format", "markdown").output
    assert md.startswith("## router diff") and "| meta |" in md
    assert run(str(old), str(new), "--fail-on", "never").exit_code == 0


def test_changed_file_without_version_bump_is_an_error(pair: tuple[Path, Path]) -> None:
    old, new = pair
    edit(new / "destinations.d" / "tiktok.yaml", "timeout_seconds:", "timeout_seconds: 12\n#")
    result = run(str(old), str(new))
    assert result.exit_code == 1
    assert "destinations.d/tiktok.yaml changed without a version bump" in result.output


def test_settings_change_that_breaks_accounts(pair: tuple[Path, Path]) -> None:
    old, new = pair
    webhook = new / "destinations.d" / "webhook.yaml"
    edit(webhook, "  required: [url, secret]", "  required: [url, secret, region]")
    bump(webhook)
    result = run(str(old), str(new))
    # the accounts that the new settings schema breaks make the new config invalid, and
    # the report names each one with its file and line
    assert result.exit_code == 1 and "does not validate" in result.output
    assert "accounts/demo.yaml:" in result.output
    assert "settings for destination 'webhook'" in result.output
    assert "missing required key 'region'" in result.output


def test_invalid_new_config_is_reported_and_fails(pair: tuple[Path, Path]) -> None:
    old, new = pair
    edit(new / "mappings" / "segment.yaml", "canonical: purchase", "canonical: purchased")
    result = run(str(old), str(new))
    assert result.exit_code == 1 and "does not validate" in result.output


def test_git_revision_against_working_tree(repo_root: Path, tmp_path: Path) -> None:
    repo = copy_config(repo_root, tmp_path / "repo")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    seg = repo / "mappings" / "segment.yaml"
    edit(seg, "  Signed Up:\n    canonical: sign_up", "  Signed Up:\n    canonical: lead")
    bump(seg)
    result = run("--git", "HEAD", "--config-dir", str(repo))
    assert "'Signed Up' re-targeted: sign_up -> lead" in result.output
    assert result.exit_code == 1
    bad = run("--git", "no-such-rev", "--config-dir", str(repo))
    assert bad.exit_code == 2 and "could not export" in bad.output
