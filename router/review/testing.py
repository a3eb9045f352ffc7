"""`router test`: config test files run in-process — no network, no server.

A test file (YAML, under tests/config/ by convention) holds cases: a source payload
(inline or from a file), optional prior events (for dedup and identity), and
expectations at any stage. Each case runs through the real pipeline — mapping, guard,
identity, consent, routing, dedup and identity graph against a throwaway SQLite store,
then every requested destination's rendering — with a fixed clock.

Exact outputs live beside the file in `<name>.golden.json`, keyed by case name, and
are rewritten by `--update`; the YAML is written by people and never rewritten, so its
comments survive. Hand-written `expect` blocks assert what matters without a golden.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import orjson

from router.config import schemas
from router.config.issues import Issue
from router.config.model import CompiledConfig, DestinationConnection, freeze
from router.config.yamlload import load_yaml_file
from router.delivery.preview import preview
from router.expr.functions import iso_time, parse_time
from router.expr.jmes import ExprError, compile_expr
from router.pipeline.commit import Item, commit
from router.pipeline.mapping import split_messages
from router.pipeline.prepare import prepare
from router.store.sqlite import SQLiteStore

DEFAULT_RECEIVED_AT = "2026-01-01T12:00:00.000Z"
TEST_DIR = "tests/config"


@dataclass
class CaseResult:
    file: str
    line: int
    name: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    actual: Any = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class FileRun:
    path: Path
    display: str
    results: list[CaseResult] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    golden_changed: bool = False


# --- discovering and loading test files ------------------------------------------------

def discover(config_dir: str, paths: Iterable[str]) -> list[Path]:
    roots = [Path(p) for p in paths] or [Path(config_dir) / TEST_DIR]
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found += sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))
    return found


def _display(path: Path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def golden_path(path: Path) -> Path:
    return path.with_name(path.stem + ".golden.json")


# --- running one case -------------------------------------------------------------------

def _account_env(config: CompiledConfig, case: dict[str, Any]) -> tuple[str, str]:
    account = case.get("account") or ("demo" if "demo" in config.accounts
                                      else next(iter(config.accounts)))
    return account, case.get("environment") or "production"


def _input(case: dict[str, Any], base: Path, key: str = "input") -> Any:
    if f"{key}_file" in case:
        return orjson.loads((base / case[f"{key}_file"]).read_bytes())
    return case.get(key)


def _prepare_all(config: CompiledConfig, spec: dict[str, Any], base: Path, account: str,
                 environment: str, received_at: str) -> tuple[list[Any], list[Any]]:
    """(prepared items in order, rejections/unmapped kept as results)."""
    acc, env = config.account_env(account, environment)
    mapping = config.mapping_for(env, spec["source"])
    out = []
    for message in split_messages(mapping, _input(spec, base)):
        if isinstance(message, dict):
            message = {**message, "_meta": {**(message.get("_meta") or {}),
                                            **(spec.get("meta") or {}),
                                            "received_at": received_at}}
        out.append(prepare(config, mapping, acc, environment, message, received_at))
    return out, []


async def _run_case(config: CompiledConfig, case: dict[str, Any], base: Path,
                    store_dir: str) -> list[dict[str, Any]]:
    account, environment = _account_env(config, case)
    received_at = iso_time(case.get("received_at") or DEFAULT_RECEIVED_AT) or \
        DEFAULT_RECEIVED_AT
    now = (parse_time(received_at) or parse_time(DEFAULT_RECEIVED_AT)).timestamp()  # type: ignore[union-attr]
    store = SQLiteStore(f"sqlite:///{store_dir}/case.db")
    await store.open()
    try:
        for prior in case.get("prior") or []:
            prepared, _ = _prepare_all(config, prior, base, *(_account_env(config, prior) if
                                       prior.get("account") else (account, environment)),
                                       received_at)
            items = [Item(p.event, p.idempotency_key) for p in prepared
                     if p.rejection is None and p.event is not None]
            await commit(store, config, items, now=now)
        prepared, _ = _prepare_all(config, case, base, account, environment, received_at)
        items = [Item(p.event, p.idempotency_key) for p in prepared
                 if p.rejection is None and p.event is not None]
        stored = iter(await commit(store, config, items, now=now))
        outputs = []
        for p in prepared:
            if p.rejection is not None:
                outputs.append({"status": "rejected", "reason": p.rejection.code,
                                "message": p.rejection.message})
                continue
            result = next(stored)
            out: dict[str, Any] = {"status": result.status}
            if result.reason:
                out["reason"] = result.reason
            if result.seq is not None:
                # the stored event: for a duplicate, the first arrival it merged into
                event = (await store.events_by_seq([result.seq]))[result.seq]
                out["event"] = _event_view(config, event.row.body, case)
                if result.status != "duplicate":
                    out["destinations"] = _destinations(config, case, account, environment,
                                                        p.event, event.row.body, now)
            outputs.append(out)
        return outputs
    finally:
        await store.close()


def _event_view(config: CompiledConfig, body: dict[str, Any], case: dict[str, Any]) -> Any:
    """The stored event, without destination-specific identifier variants (those are
    proven by destination cases) unless the case asks for them."""
    if case.get("variants"):
        return body
    variants = {spec.name for spec in config.identifier_variants}
    return {**body, "user_data": {k: v for k, v in body.get("user_data", {}).items()
                                  if k not in variants}}


def _destinations(config: CompiledConfig, case: dict[str, Any], account: str, environment: str,
                  event: Any, body: dict[str, Any], now: float) -> dict[str, Any]:
    wanted = case.get("destinations")
    if not wanted:
        return {}
    _, env = config.account_env(account, environment)
    if wanted == "all":
        wanted = {name: {} for name in env.destinations}
    elif isinstance(wanted, list):
        wanted = {name: {} for name in wanted}
    out = {}
    for name, override in wanted.items():
        dest = config.destinations.get(name)
        if dest is None:
            out[name] = {"error": f"unknown destination {name!r}"}
            continue
        base_conn = env.destinations.get(name) or DestinationConnection(name)
        settings = override.get("settings", base_conn.settings)
        conn = DestinationConnection(name, True, bool(override.get("test_mode",
                                                                   base_conn.test_mode)),
                                     freeze(settings), override.get("gpc", base_conn.gpc))
        out[name] = _destination_output(dest, conn, event, body, now)
    return out


def _destination_output(dest: Any, conn: DestinationConnection, event: Any,
                        body: dict[str, Any], now: float) -> dict[str, Any]:
    return preview(dest, conn, event, body, now, access_token="test-oauth-access-token")


# --- expectations -----------------------------------------------------------------------

def _subset(expected: Any, actual: Any, path: str = "") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path or '(top)'}: expected an object, got {_short(actual)}"]
        out = []
        for key, value in expected.items():
            if key not in actual:
                out.append(f"{path}.{key}: missing (expected {_short(value)})")
            else:
                out += _subset(value, actual[key], f"{path}.{key}")
        return out
    if expected != actual or type(expected) is not type(actual):
        return [f"{path or '(top)'}: expected {_short(expected)}, got {_short(actual)}"]
    return []


def _short(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def check_expect(expect: dict[str, Any], outputs: list[dict[str, Any]]) -> list[str]:
    failures: list[str] = []
    index = expect.get("index", 0)
    if index >= len(outputs):
        return [f"expect.index {index}: the input produced {len(outputs)} event(s)"]
    out = outputs[index]
    if "count" in expect and expect["count"] != len(outputs):
        failures.append(f"count: expected {expect['count']} event(s), got {len(outputs)}")
    for key in ("status", "reason"):
        if key in expect and expect[key] != out.get(key) and not (
                key == "reason" and out.get(key) and expect[key] in out[key]):
            failures.append(f"{key}: expected {expect[key]!r}, got {out.get(key)!r}")
    if "event" in expect:
        failures += [f"event{m}" for m in _subset(expect["event"], out.get("event"))]
    for name, want in (expect.get("destinations") or {}).items():
        got = (out.get("destinations") or {}).get(name)
        if got is None:
            failures.append(f"destinations.{name}: not evaluated (list it under the case's "
                            "`destinations`)")
            continue
        for key in ("sent", "platform_event"):
            if key in want and want[key] != got.get(key):
                why = f" ({got['reason']})" if got.get("reason") else ""
                failures.append(f"destinations.{name}.{key}: expected {want[key]!r}, got "
                                f"{got.get(key)!r}{why}")
        if "reason" in want and want["reason"] not in (got.get("reason") or ""):
            failures.append(f"destinations.{name}.reason: expected {want['reason']!r} in "
                            f"{got.get('reason')!r}")
        if "request" in want:
            failures += [f"destinations.{name}.request{m}"
                         for m in _subset(want["request"], got.get("request"))]
        for assertion in want.get("assert") or []:
            try:
                ok = compile_expr(assertion).search(got.get("request") or {})
            except ExprError as exc:
                failures.append(f"destinations.{name}.assert {assertion!r}: {exc}")
                continue
            if not ok:
                failures.append(f"destinations.{name}.assert failed: {assertion}")
    return failures


def golden_view(case: dict[str, Any], outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the golden file pins: a case about destinations pins their requests (the
    canonical event is pinned by the source's own cases), otherwise the event."""
    if not case.get("destinations"):
        return outputs
    return [{k: v for k, v in out.items() if k != "event"} for out in outputs]


def golden_diff(expected: Any, actual: Any) -> str:
    a = orjson.dumps(expected, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    b = orjson.dumps(actual, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    lines = difflib.unified_diff(a.splitlines(), b.splitlines(), "expected (golden)", "actual",
                                 lineterm="", n=2)
    return "\n".join(lines)


# --- running files ------------------------------------------------------------------------

def _cases(data: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    defaults = data.get("defaults") or {}
    for index, case in enumerate(data.get("cases") or []):
        yield index, {**defaults, **case}


def run_file(config: CompiledConfig, path: Path, update: bool = False,
             match: str | None = None) -> FileRun:
    display = _display(path)
    loaded = load_yaml_file(str(path), display, resolve=False)
    run = FileRun(path, display, issues=list(loaded.issues))
    if loaded.data is None or run.issues:
        return run
    run.issues += schemas.check(loaded, "test")
    if run.issues:
        return run
    gpath = golden_path(path)
    golden = orjson.loads(gpath.read_bytes()) if gpath.exists() else {}
    new_golden: dict[str, Any] = {}
    names = set()
    for index, case in _cases(loaded.data):
        line = loaded.mark(("cases", index))[0]
        name = case["name"]
        if name in names:
            run.issues.append(loaded.issue(("cases", index, "name"), f"duplicate case name {name!r}",
                                           code="test-duplicate-name"))
            continue
        names.add(name)
        if match and match not in name:
            if name in golden:
                new_golden[name] = golden[name]
            continue
        started = time.perf_counter()
        failures: list[str] = []
        actual: Any = None
        missing = [k for k in ("source",) if k not in case] + (
            [] if "input" in case or "input_file" in case else ["input or input_file"])
        if missing:
            run.issues.append(loaded.issue(("cases", index), f"case {name!r} needs "
                                           f"{' and '.join(missing)} (here or in defaults)",
                                           code="test-incomplete"))
            continue
        try:
            with tempfile.TemporaryDirectory(prefix="router-test-") as tmp:
                actual = asyncio.run(_run_case(config, case, path.parent, tmp))
        except (KeyError, ValueError, OSError) as exc:
            failures.append(f"could not run: {exc}")
        if actual is not None:
            failures += check_expect(case.get("expect") or {}, actual)
            if case.get("golden", True):
                view = golden_view(case, actual)
                if update:
                    new_golden[name] = view
                elif name not in golden:
                    failures.append(f"no golden output for this case in {_display(gpath)}: run "
                                    "`router test --update` and review the diff")
                elif golden[name] != view:
                    failures.append("output differs from the golden file:\n" +
                                    golden_diff(golden[name], view))
        run.results.append(CaseResult(display, line, name, not failures, failures,
                                      time.perf_counter() - started, actual))
    if update:
        if new_golden != golden:
            gpath.write_bytes(orjson.dumps(new_golden, option=orjson.OPT_INDENT_2) + b"\n")
            run.golden_changed = True
    elif golden and not match:
        stale = sorted(set(golden) - names)
        if stale:
            run.issues.append(Issue(_display(gpath), 1, 1, "warning",
                                    f"golden outputs for cases that no longer exist: {stale}",
                                    code="test-stale-golden"))
    return run


def write_junit(runs: list[FileRun], target: str) -> None:
    suites = ElementTree.Element("testsuites", name="router test")
    for run in runs:
        suite = ElementTree.SubElement(
            suites, "testsuite", name=run.display, tests=str(len(run.results)),
            failures=str(sum(not r.passed for r in run.results)),
            errors=str(sum(i.severity == "error" for i in run.issues)))
        for issue in (i for i in run.issues if i.severity == "error"):
            case = ElementTree.SubElement(suite, "testcase", name=f"{issue.file}:{issue.line}",
                                          classname=run.display)
            ElementTree.SubElement(case, "error", message=issue.message).text = issue.text()
        for result in run.results:
            case = ElementTree.SubElement(suite, "testcase", name=result.name,
                                          classname=run.display, time=f"{result.seconds:.3f}",
                                          file=result.file, line=str(result.line))
            if not result.passed:
                failure = ElementTree.SubElement(case, "failure",
                                                 message=result.failures[0].splitlines()[0])
                failure.text = "\n".join(result.failures)
    ElementTree.ElementTree(suites).write(target, encoding="utf-8", xml_declaration=True)
