"""`router diff`: what a config change means, and which real events it changes.

Not a text diff: the two configs are compiled and compared as data — source events
added, removed or re-targeted, canonical -> platform name changes, identity, consent
and payload field changes, destinations added or removed, settings changes that break
existing accounts, and files changed without a `version` bump. Then impact: a corpus
of sample payloads and/or recent stored events go through both configs, and each
destination reports how many events would now be sent, no longer sent, or sent
differently, with minimal example diffs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from router.config.compile import check_config
from router.config.issues import ERROR, Issue
from router.config.model import CompiledConfig, SourceMapping, thaw
from router.delivery.preview import preview
from router.expr.functions import iso_time
from router.pipeline.event import Event, event_from_body
from router.pipeline.mapping import split_messages
from router.pipeline.prepare import prepare

BREAKING = "breaking"
CHANGE = "change"
INFO = "info"


@dataclass(frozen=True)
class Finding:
    severity: str  # breaking | change | info
    area: str  # mapping:segment, destination:meta, canonical, account:demo, files
    message: str


@dataclass
class Impact:
    destination: str
    now_sent: int = 0
    no_longer_sent: int = 0
    sent_differently: int = 0
    unchanged: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DiffReport:
    old: str
    new: str
    findings: list[Finding] = field(default_factory=list)
    new_issues: list[Issue] = field(default_factory=list)
    impact: dict[str, Impact] = field(default_factory=dict)
    replayed: int = 0

    @property
    def breaking(self) -> bool:
        return bool(self.new_issues) or any(f.severity == BREAKING for f in self.findings)


# --- loading the two sides -------------------------------------------------------------

def export_git(revision: str, config_dir: str, target: str) -> str:
    """The config dir as it was at `revision`, extracted under `target`."""
    prefix = subprocess.run(["git", "-C", config_dir, "rev-parse", "--show-prefix"],
                            check=True, capture_output=True, text=True).stdout.strip()
    archive = os.path.join(target, "rev.tar")
    with open(archive, "wb") as fh:
        subprocess.run(["git", "-C", config_dir, "archive", "--format=tar", revision, "--",
                        *[f"{prefix}{d}" for d in ("configs", "mappings", "destinations.d")]],
                       check=True, stdout=fh, stderr=subprocess.PIPE)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return os.path.join(target, prefix)


def _file_digests(root: str) -> dict[str, tuple[str, str | None]]:
    """relative path -> (content digest, declared version) for versioned files."""
    import yaml

    out: dict[str, tuple[str, str | None]] = {}
    for sub in ("mappings", "destinations.d", "configs"):
        base = Path(root) / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.y*ml")):
            text = path.read_bytes()
            try:
                version = (yaml.safe_load(text) or {}).get("version")
            except yaml.YAMLError:
                version = None
            out[str(path.relative_to(root))] = (hashlib.sha256(text).hexdigest(),
                                                None if version is None else str(version))
    return out


# --- semantic comparison ----------------------------------------------------------------

def _rule_fields(mapping: SourceMapping, name: str) -> dict[str, str | None]:
    rule = mapping.rules[name]
    return {".".join(f.path): (f.expr.source if f.expr else None) for f in rule.fields}


def _both(old: Mapping[str, Any], new: Mapping[str, Any], kind: str, label: str,
          out: list[Finding]) -> Iterator[tuple[str, str, Any, Any]]:
    """Report what was added or removed; yield (name, area, old, new) for the rest."""
    for name in sorted(set(old) | set(new)):
        area = f"{kind}:{name}"
        if name not in new:
            out.append(Finding(BREAKING, area, f"{label} {name!r} removed"))
        elif name not in old:
            out.append(Finding(CHANGE, area, f"{label} {name!r} added"))
        else:
            a, b = old[name], new[name]
            if a.version != b.version:
                out.append(Finding(INFO, area, f"version {a.version} -> {b.version}"))
            yield name, area, a, b


def _compare_mappings(old: CompiledConfig, new: CompiledConfig, out: list[Finding]) -> None:
    for _, area, a, b in _both(old.mappings, new.mappings, "mapping", "source", out):
        for name in sorted(set(a.rules) | set(b.rules)):
            if name not in b.rules:
                out.append(Finding(BREAKING, area, f"{name!r} is no longer mapped (was "
                                   f"{a.rules[name].canonical}); it will arrive as unmapped"))
            elif name not in a.rules:
                out.append(Finding(CHANGE, area, f"{name!r} now maps to {b.rules[name].canonical}"))
            else:
                if a.rules[name].canonical != b.rules[name].canonical:
                    out.append(Finding(BREAKING, area, f"{name!r} re-targeted: "
                                       f"{a.rules[name].canonical} -> {b.rules[name].canonical}"))
                fa, fb = _rule_fields(a, name), _rule_fields(b, name)
                for path in sorted(set(fa) | set(fb)):
                    if fa.get(path) != fb.get(path):
                        kind = "identity" if path.startswith("user_data") else (
                            "consent" if path.startswith("consent") else "field")
                        verb = "added" if path not in fa else (
                            "removed" if path not in fb else "changed")
                        out.append(Finding(CHANGE, area, f"{name!r}: {kind} {path} {verb}"
                                           + (f": {fa.get(path)!r} -> {fb.get(path)!r}"
                                              if verb == "changed" else "")))


def _compare_canonical(old: CompiledConfig, new: CompiledConfig, out: list[Finding]) -> None:
    for name in sorted(set(old.canonical) | set(new.canonical)):
        if name not in new.canonical:
            out.append(Finding(BREAKING, "canonical", f"canonical event {name!r} removed"))
            continue
        if name not in old.canonical:
            out.append(Finding(CHANGE, "canonical", f"canonical event {name!r} added"))
            continue
        a, b = old.canonical[name], new.canonical[name]
        req_a = set(thaw(a.schema).get("required") or [])
        req_b = set(thaw(b.schema).get("required") or [])
        if req_b - req_a:
            out.append(Finding(BREAKING, "canonical", f"{name}: custom_data now requires "
                               f"{sorted(req_b - req_a)} (events without them are rejected)"))
        if req_a - req_b:
            out.append(Finding(CHANGE, "canonical", f"{name}: no longer requires "
                               f"{sorted(req_a - req_b)}"))
        if a.dedup_keys != b.dedup_keys:
            out.append(Finding(CHANGE, "canonical", f"{name}: dedup keys {list(a.dedup_keys)} -> "
                               f"{list(b.dedup_keys)}"))
        if a.hold_seconds != b.hold_seconds:
            out.append(Finding(CHANGE, "canonical", f"{name}: hold {a.hold_seconds}s -> "
                               f"{b.hold_seconds}s"))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _compare_destinations(old: CompiledConfig, new: CompiledConfig, out: list[Finding]) -> None:
    for _, area, a, b in _both(old.destinations, new.destinations, "destination",
                               "destination", out):
        for canon in sorted(set(a.event_names) | set(b.event_names)):
            pa, pb = a.event_names.get(canon), b.event_names.get(canon)
            if pa != pb:
                text = (f"{canon} no longer sent (was {pa!r})" if pb is None else
                        f"{canon} now sent as {pb!r}" if pa is None else
                        f"{canon}: {pa!r} -> {pb!r}")
                out.append(Finding(BREAKING if pb is None else CHANGE, area, text))
        if set(a.consent_requires) != set(b.consent_requires):
            out.append(Finding(CHANGE, area, f"consent requires {list(a.consent_requires)} -> "
                               f"{list(b.consent_requires)}"))
        da, db = thaw(a.definition), thaw(b.definition)
        for section in ("payload", "identifiers", "request", "batch", "response", "send_if"):
            fa, fb = _flatten(da.get(section)), _flatten(db.get(section))
            for path in sorted(set(fa) | set(fb)):
                if fa.get(path) != fb.get(path):
                    where = f"{section}.{path}".rstrip(".")
                    verb = "added" if path not in fa else ("removed" if path not in fb else
                                                           "changed")
                    out.append(Finding(CHANGE, area, f"{where} {verb}"))
        req_a = set(thaw(a.settings_schema).get("required") or [])
        req_b = set(thaw(b.settings_schema).get("required") or [])
        if req_b - req_a:
            out.append(Finding(BREAKING, area, f"settings now require {sorted(req_b - req_a)}"))


def _compare_accounts(old: CompiledConfig, new: CompiledConfig, out: list[Finding]) -> None:
    for name in sorted(set(old.accounts) | set(new.accounts)):
        area = f"account:{name}"
        if name not in new.accounts or name not in old.accounts:
            out.append(Finding(CHANGE, area, "account " + ("removed" if name in old.accounts
                                                           else "added")))
            continue
        for env_name in sorted(set(old.accounts[name].environments) |
                               set(new.accounts[name].environments)):
            a = old.accounts[name].environments.get(env_name)
            b = new.accounts[name].environments.get(env_name)
            da = {d for d, c in (a.destinations.items() if a else []) if c.enabled}
            db = {d for d, c in (b.destinations.items() if b else []) if c.enabled}
            for d in sorted(db - da):
                out.append(Finding(CHANGE, area, f"{env_name}: destination {d} enabled"))
            for d in sorted(da - db):
                out.append(Finding(CHANGE, area, f"{env_name}: destination {d} disabled"))


def _compare_versions(old_root: str, new_root: str, out: list[Finding]) -> None:
    a, b = _file_digests(old_root), _file_digests(new_root)
    for path in sorted(set(a) & set(b)):
        (da, va), (db, vb) = a[path], b[path]
        if da != db and va == vb and (path.startswith(("mappings", "destinations.d"))):
            out.append(Finding(BREAKING, "files", f"{path} changed without a version bump "
                               f"(still {vb!r}): events and deliveries could not tell the "
                               "rules apart"))


# --- impact ----------------------------------------------------------------------------------

def _corpus(directory: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(source, meta, payload) from DIR/<source>/*.json, or files holding
    {"source", "input", "meta"?} anywhere below DIR."""
    for path in sorted(Path(directory).rglob("*.json")):
        document = orjson.loads(path.read_bytes())
        if isinstance(document, dict) and "source" in document and "input" in document:
            yield document["source"], document.get("meta") or {}, document["input"]
        else:
            yield path.parent.name, {}, document


def _events_for(config: CompiledConfig, source: str, meta: dict[str, Any], payload: Any,
                account: str, environment: str, received_at: str) -> list[Event | None]:
    acc, env = config.account_env(account, environment)
    try:
        mapping = config.mapping_for(env, source)
    except KeyError:
        return []
    out: list[Event | None] = []
    for message in split_messages(mapping, payload):
        if isinstance(message, dict):
            message = {**message, "_meta": {**meta, "received_at": received_at}}
        prepared = prepare(config, mapping, acc, environment, message, received_at)
        out.append(prepared.event if prepared.rejection is None else None)
    return out


def _minimal(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        lines = []
        for key in sorted(set(a) | set(b)):
            lines += _minimal(a.get(key), b.get(key), f"{path}.{key}")
        return lines
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        lines = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            lines += _minimal(x, y, f"{path}[{i}]")
        return lines
    if a != b:
        return [f"{path or '.'}: {_j(a)} -> {_j(b)}"]
    return []


def _j(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def _compare_event(report: DiffReport, old: CompiledConfig, new: CompiledConfig, account: str,
                   environment: str, before: Event | None, after: Event | None,
                   label: str, now: float) -> None:
    _, env_old = old.account_env(account, environment)
    _, env_new = new.account_env(account, environment)
    names = set(env_old.destinations) | set(env_new.destinations)
    for name in sorted(names):
        a = _preview(old, env_old, name, before, now)
        b = _preview(new, env_new, name, after, now)
        impact = report.impact.setdefault(name, Impact(name))
        if a.get("sent") and not b.get("sent"):
            impact.no_longer_sent += 1
            change = [f"no longer sent: {b.get('reason')}"]
        elif b.get("sent") and not a.get("sent"):
            impact.now_sent += 1
            change = [f"now sent (was: {a.get('reason')})"]
        elif a.get("sent") and a != b:
            impact.sent_differently += 1
            change = _minimal(a, b)
        else:
            impact.unchanged += 1
            continue
        if len(impact.examples) < 3:
            impact.examples.append({"event": label, "changes": change[:6]})


def _preview(config: CompiledConfig, env: Any, name: str, event: Event | None,
             now: float) -> dict[str, Any]:
    dest = config.destinations.get(name)
    conn = env.destinations.get(name)
    if event is None:
        return {"sent": False, "reason": "rejected or not produced"}
    if dest is None or conn is None or not conn.enabled:
        return {"sent": False, "reason": "destination not enabled"}
    return preview(dest, conn, event, event.to_dict(), now)


def diff_configs(old_root: str, new_root: str, *, corpus: str | None = None,
                 stored: list[dict[str, Any]] | None = None, account: str | None = None,
                 environment: str = "production") -> DiffReport:
    old, old_issues = check_config(old_root)
    new, new_issues = check_config(new_root)
    report = DiffReport(old_root, new_root)
    report.new_issues = [i for i in new_issues if i.severity == ERROR]
    if old is None:
        report.findings.append(Finding(INFO, "files", f"the old config does not compile "
                                       f"({sum(i.severity == ERROR for i in old_issues)} errors)"
                                       "; comparing files only"))
    if new is None or old is None:
        _compare_versions(old_root, new_root, report.findings)
        return report
    _compare_mappings(old, new, report.findings)
    _compare_canonical(old, new, report.findings)
    _compare_destinations(old, new, report.findings)
    _compare_accounts(old, new, report.findings)
    _compare_versions(old_root, new_root, report.findings)
    account = account or ("demo" if "demo" in new.accounts else next(iter(new.accounts), None))
    if account is None or account not in old.accounts:
        return report
    now = datetime.now(UTC)
    received_at = iso_time(now) or ""
    if corpus:
        for source, meta, payload in _corpus(corpus):
            before = _events_for(old, source, meta, payload, account, environment, received_at)
            after = _events_for(new, source, meta, payload, account, environment, received_at)
            for i in range(max(len(before), len(after))):
                a = before[i] if i < len(before) else None
                b = after[i] if i < len(after) else None
                label = (b or a).event_id if (b or a) else f"{source} payload"
                _compare_event(report, old, new, account, environment, a, b, label,
                               now.timestamp())
                report.replayed += 1
    for body in stored or []:
        event = event_from_body(body)
        _compare_event(report, old, new, event.account, event.environment, event, event,
                       event.event_id, now.timestamp())
        report.replayed += 1
    return report




async def recent_events(store_url: str, last: int) -> list[dict[str, Any]]:
    from router.store import open_store

    store = open_store(store_url)
    await store.open()
    try:
        events = await store.list_events(limit=last, status="mapped")
        return [e.row.body for e in events]
    finally:
        await store.close()


# --- rendering ---------------------------------------------------------------------------------

def render(report: DiffReport, fmt: str = "text") -> str:
    if fmt == "json":
        return orjson.dumps({
            "old": report.old, "new": report.new, "breaking": report.breaking,
            "new_config_errors": [i.text() for i in report.new_issues],
            "findings": [f.__dict__ for f in report.findings], "replayed": report.replayed,
            "impact": {k: v.__dict__ for k, v in report.impact.items()}},
            option=orjson.OPT_INDENT_2).decode() + "\n"
    md = fmt == "markdown"
    lines = ["## router diff" if md else "router diff", ""]
    if report.new_issues:
        lines.append("**The new config does not validate:**" if md else
                      "The new config does not validate:")
        lines += [f"- `{i.text().splitlines()[0]}`" if md else "  " + i.text().splitlines()[0]
                  for i in report.new_issues]
        lines.append("")
    by_area: dict[str, list[Finding]] = {}
    for finding in report.findings:
        by_area.setdefault(finding.area, []).append(finding)
    if not by_area and not report.new_issues:
        lines.append("No semantic changes.")
    for area, findings in sorted(by_area.items()):
        lines.append(f"### {area}" if md else f"{area}:")
        for f in findings:
            mark = {"breaking": "BREAKING", "change": "", "info": ""}[f.severity]
            prefix = f"**{mark}** " if md and mark else (f"{mark}: " if mark else "")
            lines.append(f"- {prefix}{f.message}" if md else f"  - {prefix}{f.message}")
        lines.append("")
    if report.impact:
        lines.append(f"### Impact ({report.replayed} events replayed)" if md else
                     f"Impact ({report.replayed} events replayed through both configs):")
        if md:
            lines += ["", "| destination | now sent | no longer sent | sent differently | "
                          "unchanged |", "|---|---:|---:|---:|---:|"]
        for name, imp in sorted(report.impact.items()):
            if md:
                lines.append(f"| {name} | {imp.now_sent} | {imp.no_longer_sent} | "
                             f"{imp.sent_differently} | {imp.unchanged} |")
            else:
                lines.append(f"  {name:<12} now sent {imp.now_sent:>4}   no longer sent "
                             f"{imp.no_longer_sent:>4}   sent differently "
                             f"{imp.sent_differently:>4}   unchanged {imp.unchanged:>4}")
        examples = [(n, e) for n, imp in sorted(report.impact.items()) for e in imp.examples]
        if examples:
            lines.append("")
            lines.append("Examples:" if not md else "<details><summary>Examples</summary>\n")
            for name, example in examples[:15]:
                lines.append(f"- {name}, event {example['event']}:" if md else
                             f"  {name}, event {example['event']}:")
                lines += [("    - `" + c + "`") if md else "      " + c
                          for c in example["changes"]]
            if md:
                lines.append("\n</details>")
    return "\n".join(lines).rstrip() + "\n"


def temp_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="router-diff-")
