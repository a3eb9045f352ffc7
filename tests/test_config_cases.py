"""The shipped config test files (tests/config/), run by `router test`'s own engine.

Each case becomes a pytest test, so a failure reads like `router test` output. The
coverage tests keep the suite honest as mappings and destinations grow: every mapping
entry has a case, and every destination has purchase, add_to_cart and lead (where it
lists them) and an identity-poor case."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from router.config.compile import load_config
from router.config.model import CompiledConfig
from router.review.testing import FileRun, discover, run_file

REPO = Path(__file__).resolve().parent.parent
FILES = discover(str(REPO), [])
IDENTITY_POOR = {"page_view_anonymous.json", "purchase_minimal.json", "view_content.json"}
REQUIRED = ("purchase", "add_to_cart", "lead")


@functools.cache
def config() -> CompiledConfig:
    return load_config(str(REPO))


@functools.cache
def run(path: Path) -> FileRun:
    return run_file(config(), path)


def _ids() -> list[tuple[Path, str]]:
    import yaml

    out = []
    for path in FILES:
        for case in yaml.safe_load(path.read_text())["cases"]:
            out.append((path, case["name"]))
    return out


CASES = _ids()


@pytest.mark.parametrize(("path", "name"), CASES,
                         ids=[f"{p.parent.name}/{p.stem}::{n}" for p, n in CASES])
def test_config_case(path: Path, name: str) -> None:
    result = run(path)
    assert not [i for i in result.issues if i.severity == "error"], \
        "\n".join(i.text() for i in result.issues)
    [case] = [r for r in result.results if r.name == name]
    assert case.passed, f"{case.where} {name}\n" + "\n".join(case.failures)


def test_every_mapping_entry_has_a_case() -> None:
    missing = {}
    for source, mapping in config().mappings.items():
        path = REPO / "tests" / "config" / "mappings" / f"{source}.yaml"
        covered = {out["event"]["source_event"] for r in run(path).results
                   for out in r.actual or [] if out.get("event")}
        lacking = sorted(set(mapping.rules) - covered)
        if lacking:
            missing[source] = lacking
    assert not missing, f"mapping entries without a case: {missing}"


def test_every_destination_has_the_required_cases() -> None:
    import yaml

    missing = {}
    for name, dest in config().destinations.items():
        path = REPO / "tests" / "config" / "destinations" / f"{name}.yaml"
        assert path.exists(), f"no cases for destination {name}"
        spec = yaml.safe_load(path.read_text())
        sent = set()
        for result in run(path).results:
            for out in result.actual or []:
                got = (out.get("destinations") or {}).get(name) or {}
                if got.get("sent"):
                    sent.add(got["platform_event"])
        lacking = [e for e in REQUIRED if dest.platform_event(e) and
                   not any(str(dest.platform_event(e)) == s or "{{" in str(dest.platform_event(e))
                           for s in sent)]
        poor = any(Path(c.get("input_file", "")).name in IDENTITY_POOR for c in spec["cases"])
        if lacking or not poor:
            missing[name] = {"missing": lacking, "identity_poor_case": poor}
    assert not missing, f"destinations lacking cases: {missing}"
