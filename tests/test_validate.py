"""`router validate`: each error class, injected into a small valid config, is reported
with the right file, line and message — and all of them at once, not only the first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.cli import main
from router.config.compile import check_config
from router.config.issues import ERROR, WARNING, Issue

MINIMAL = Path(__file__).parent / "fixtures" / "minimal"


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the minimal config; file names in issues are relative to it."""
    root = tmp_path / "cfg"
    shutil.copytree(MINIMAL, root)
    monkeypatch.chdir(root)
    return root


def edit(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text()
    assert old in text, f"fixture text {old!r} not found in {rel}"
    path.write_text(text.replace(old, new, 1))


def line_of(root: Path, rel: str, needle: str) -> int:
    for number, line in enumerate((root / rel).read_text().splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {rel}")


def issues_of(root: Path) -> list[Issue]:
    _, issues = check_config(str(root))
    return issues


def only(issues: list[Issue], code: str) -> Issue:
    found = [i for i in issues if i.code == code]
    assert len(found) == 1, f"expected one {code} issue, got {[i.text() for i in issues]}"
    return found[0]


def test_minimal_fixture_is_valid(cfg: Path) -> None:
    config, issues = check_config(str(cfg))
    assert issues == []
    assert config is not None
    assert set(config.mappings) == {"track"}
    assert config.accounts["shop"].environments["production"].sources["track"].write_key == \
        "shop-prod-key"


def test_yaml_syntax_error_points_at_line(cfg: Path) -> None:
    edit(cfg, "mappings/track.yaml", "  Page:\n", "  Page: [unclosed\n")
    issue = only(issues_of(cfg), "yaml-syntax")
    assert issue.file == "mappings/track.yaml"
    assert issue.line >= line_of(cfg, "mappings/track.yaml", "Page: [unclosed")
    assert "YAML syntax error" in issue.message


def test_duplicate_key_is_an_error_not_silently_dropped(cfg: Path) -> None:
    edit(cfg, "mappings/track.yaml", "  Page:\n    canonical: page_view\n",
         "  Page:\n    canonical: page_view\n  Page:\n    canonical: purchase\n")
    issue = only(issues_of(cfg), "duplicate-key")
    assert issue.file == "mappings/track.yaml"
    first = line_of(cfg, "mappings/track.yaml", "  Page:")
    assert issue.line == first + 2
    assert f"first defined on line {first}" in issue.message


def test_unset_environment_variable(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOP_SECRET_UNSET", raising=False)
    edit(cfg, "configs/accounts/shop.yaml", "${SHOP_HOOK_KEY:-hook-key}", "${SHOP_SECRET_UNSET}")
    issue = only(issues_of(cfg), "env-unset")
    assert issue.file == "configs/accounts/shop.yaml"
    assert issue.line == line_of(cfg, "configs/accounts/shop.yaml", "SHOP_SECRET_UNSET")
    assert "SHOP_SECRET_UNSET is not set" in issue.message
    monkeypatch.setenv("SHOP_SECRET_UNSET", "from-env")
    config, issues = check_config(str(cfg))
    assert issues == []
    settings = config.accounts["shop"].environments["production"].destinations["hook"].settings
    assert settings["api_key"] == "from-env"


def test_unknown_key_gets_a_did_you_mean_hint(cfg: Path) -> None:
    edit(cfg, "mappings/track.yaml", "    canonical: page_view", "    canonical: page_view\n    uses: [x]")
    issue = only(issues_of(cfg), "schema")
    assert issue.file == "mappings/track.yaml"
    assert issue.line == line_of(cfg, "mappings/track.yaml", "uses: [x]")
    assert "unknown key 'uses'" in issue.message
    assert "did you mean 'use'" in issue.hint
    assert issue.schema_path.startswith("mapping.schema.json#/")


def test_missing_required_key_and_wrong_type(cfg: Path) -> None:
    edit(cfg, "mappings/canonical.yaml", "    category: browsing\n", "")
    edit(cfg, "configs/router.yaml", "port: 8080", "port: eighty")
    issues = issues_of(cfg)
    missing = [i for i in issues if "missing required key 'category'" in i.message]
    assert missing and missing[0].file == "mappings/canonical.yaml"
    assert missing[0].line == line_of(cfg, "mappings/canonical.yaml", "page_view:")
    port = [i for i in issues if i.file == "configs/router.yaml"]
    assert port and "expected integer" in port[0].message
    assert port[0].line == line_of(cfg, "configs/router.yaml", "port: eighty")


def test_enum_error_lists_allowed_values(cfg: Path) -> None:
    edit(cfg, "mappings/canonical.yaml", "category: browsing", "category: browse")
    issue = only(issues_of(cfg), "schema")
    assert "'browse' is not an allowed value" in issue.message
    assert "did you mean 'browsing'" in issue.hint


def test_mapping_to_unknown_canonical_event(cfg: Path) -> None:
    edit(cfg, "mappings/track.yaml", "canonical: purchase", "canonical: purchased")
    issue = only(issues_of(cfg), "unknown-canonical")
    assert issue.file == "mappings/track.yaml"
    assert issue.line == line_of(cfg, "mappings/track.yaml", "canonical: purchased")
    assert "unknown canonical event 'purchased'" in issue.message
    assert "did you mean 'purchase'" in issue.hint


def test_bad_jmespath_syntax_and_unknown_function(cfg: Path) -> None:
    edit(cfg, "mappings/track.yaml", "value: number(total)", "value: numbr(total)")
    edit(cfg, "mappings/track.yaml", "order_id: str(order)", "order_id: str(order")
    issues = [i for i in issues_of(cfg) if i.code == "jmespath"]
    assert len(issues) == 2
    by_line = {i.line: i for i in issues}
    bad_fn = by_line[line_of(cfg, "mappings/track.yaml", "numbr(total)")]
    assert "unknown function numbr()" in bad_fn.message
    bad_syntax = by_line[line_of(cfg, "mappings/track.yaml", "str(order")]
    assert "invalid JMESPath" in bad_syntax.message


def test_function_arity_is_checked_at_load(cfg: Path) -> None:
    edit(cfg, "mappings/track.yaml", "upper(currency)", "upper(currency, total)")
    issue = only(issues_of(cfg), "jmespath")
    assert "upper() takes 1 argument(s), got 2" in issue.message


def test_unknown_jinja_filter_and_template_syntax(cfg: Path) -> None:
    edit(cfg, "destinations.d/hook.yaml", "email_sha256 }}", "email_sha256 | sha512 }}")
    edit(cfg, "destinations.d/hook.yaml", '"{{ event.event_id }}"', '"{{ event.event_id "')
    issues = [i for i in issues_of(cfg) if i.code == "jinja"]
    assert len(issues) == 2
    messages = " ".join(i.message for i in issues)
    assert "No filter named 'sha512'" in messages
    assert {i.line for i in issues} == {line_of(cfg, "destinations.d/hook.yaml", "sha512"),
                                        line_of(cfg, "destinations.d/hook.yaml", "id: ")}


def test_account_enables_unknown_destination(cfg: Path) -> None:
    edit(cfg, "configs/accounts/shop.yaml", "      hook:\n", "      hok:\n")
    issue = only(issues_of(cfg), "unknown-destination")
    assert issue.line == line_of(cfg, "configs/accounts/shop.yaml", "hok:")
    assert "did you mean 'hook'" in issue.hint


def test_account_settings_checked_against_destination_schema(cfg: Path) -> None:
    edit(cfg, "configs/accounts/shop.yaml", "          url: http://127.0.0.1:9/hook\n", "")
    edit(cfg, "configs/accounts/shop.yaml", "        settings:\n",
         "        settings:\n          base_url: not-a-url\n")
    issues = [i for i in issues_of(cfg) if i.code == "settings"]
    messages = " | ".join(i.message for i in issues)
    assert "missing required key 'url'" in messages
    assert "base_url" in messages and "does not match" in messages
    assert all(i.file == "configs/accounts/shop.yaml" for i in issues)


def test_literal_secret_is_flagged(cfg: Path) -> None:
    edit(cfg, "configs/accounts/shop.yaml", "${SHOP_HOOK_KEY:-hook-key}", "hunter2-literal")
    issue = only(issues_of(cfg), "literal-secret")
    assert issue.severity == ERROR
    assert issue.line == line_of(cfg, "configs/accounts/shop.yaml", "hunter2-literal")
    assert "'api_key'" in issue.message


def test_token_shaped_literal_is_a_warning_and_strict_fails(cfg: Path) -> None:
    edit(cfg, "configs/accounts/shop.yaml", "http://127.0.0.1:9/hook",
         "http://127.0.0.1:9/hook\n          pixel: EAABsbCS1iHgBAKZAZBZCqZC7pZBZAZCZBq4x0ZB")
    edit(cfg, "destinations.d/hook.yaml", "    api_key: {type: string}",
         "    api_key: {type: string}\n    pixel: {type: string}")
    config, issues = check_config(str(cfg))
    warning = only(issues, "token-like-literal")
    assert warning.severity == WARNING
    assert config is not None  # warnings alone do not block
    runner = CliRunner()
    assert runner.invoke(main, ["validate", "--config-dir", str(cfg)]).exit_code == 0
    assert runner.invoke(main, ["validate", "--config-dir", str(cfg), "--strict"]).exit_code == 1


def test_staging_and_production_cannot_share_a_credential(cfg: Path) -> None:
    edit(cfg, "configs/accounts/shop.yaml", "${SHOP_STAGING_WRITE_KEY:-shop-staging-key}",
         "${SHOP_STAGING_WRITE_KEY:-shop-prod-key}")
    issue = only(issues_of(cfg), "shared-credential")
    assert "shop/staging" in issue.message and "shop/production" in issue.message


def test_unknown_source_and_consent_purpose(cfg: Path) -> None:
    edit(cfg, "configs/accounts/shop.yaml", "      track:\n        write_key: ${SHOP_WRITE_KEY",
         "      trak:\n        write_key: ${SHOP_WRITE_KEY")
    edit(cfg, "destinations.d/hook.yaml", "requires: [advertising]", "requires: [advertisin]")
    issues = issues_of(cfg)
    assert "did you mean 'track'" in only(issues, "unknown-source").hint
    purpose = only(issues, "unknown-purpose")
    assert purpose.file == "destinations.d/hook.yaml"
    assert "did you mean 'advertising'" in purpose.hint


def test_invalid_canonical_json_schema(cfg: Path) -> None:
    edit(cfg, "mappings/canonical.yaml", "value: {$ref: \"#/$defs/money\"}", "value: {type: moneyish}")
    issue = only(issues_of(cfg), "canonical-schema")
    assert issue.file == "mappings/canonical.yaml"
    assert "not a valid JSON Schema" in issue.message


def test_every_problem_is_reported_in_one_run(cfg: Path) -> None:
    edit(cfg, "mappings/track.yaml", "canonical: purchase", "canonical: purchased")
    edit(cfg, "destinations.d/hook.yaml", "email_sha256 }}", "email_sha256 | nosuch }}")
    edit(cfg, "configs/accounts/shop.yaml", "${SHOP_HOOK_KEY:-hook-key}", "literal-key")
    edit(cfg, "configs/router.yaml", "port: 8080", "port: 0")
    codes = {i.code for i in issues_of(cfg)}
    assert {"unknown-canonical", "jinja", "literal-secret", "schema"} <= codes


def test_missing_layout_is_reported(tmp_path: Path) -> None:
    _, issues = check_config(str(tmp_path))
    messages = " ".join(i.message for i in issues)
    assert "missing directory configs/" in messages
    assert "missing file configs/router.yaml" in messages


# --- the command itself ---------------------------------------------------------------

def test_cli_formats_and_exit_codes(cfg: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", "--config-dir", str(cfg)])
    assert ok.exit_code == 0 and "ok: 0 error(s)" in ok.output
    edit(cfg, "mappings/track.yaml", "canonical: purchase", "canonical: purchased")
    line = line_of(cfg, "mappings/track.yaml", "purchased")
    text = runner.invoke(main, ["validate", "--config-dir", str(cfg)])
    assert text.exit_code == 1
    assert f"mappings/track.yaml:{line}:" in text.output
    assert "error: 'Order Done' maps to unknown canonical event 'purchased'" in text.output
    assert "hint: did you mean 'purchase'?" in text.output
    gh = runner.invoke(main, ["validate", "--config-dir", str(cfg), "--format", "github"])
    assert gh.exit_code == 1
    assert f"::error file=mappings/track.yaml,line={line}," in gh.output
    js = runner.invoke(main, ["validate", "--config-dir", str(cfg), "--format", "json"])
    payload = json.loads(js.output)
    assert payload[0]["file"] == "mappings/track.yaml" and payload[0]["line"] == line
    assert payload[0]["code"] == "unknown-canonical"
    usage = runner.invoke(main, ["validate", "--format", "yaml"])
    assert usage.exit_code == 2


def test_console_script_validates_shipped_configs(repo_root: Path) -> None:
    """The installed `router` entry point works and the shipped configs are valid."""
    exe = Path(sys.executable).with_name("router")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "router.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    done = subprocess.run([*cmd, "validate", "--strict"], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 0 error(s), 0 warning(s)" in done.stdout
