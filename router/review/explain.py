"""`router explain`: what the router would do with one payload, sending nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from router.config.model import CompiledConfig, Environment
from router.delivery.preview import preview
from router.expr.functions import iso_time
from router.pipeline.event import Event
from router.pipeline.mapping import split_messages
from router.pipeline.prepare import prepare


def explain(config: CompiledConfig, source: str, document: Any, *, account: str,
            environment: str, meta: dict[str, Any] | None = None,
            now: datetime | None = None) -> dict[str, Any]:
    acc, env = config.account_env(account, environment)
    mapping = config.mapping_for(env, source)
    received_at = iso_time(now or datetime.now(UTC)) or ""
    results = []
    for message in split_messages(mapping, document):
        if isinstance(message, dict) and meta:
            message = {**message, "_meta": {**(message.get("_meta") or {}), **meta}}
        prepared = prepare(config, mapping, acc, environment, message, received_at)
        item: dict[str, Any] = {"status": prepared.status}
        if prepared.rejection:
            item["reason"] = {"code": prepared.rejection.code,
                              "message": prepared.rejection.message}
        event = prepared.event
        if event is not None:
            rule = mapping.rules.get(event.source_event or "")
            item["source_event"] = event.source_event
            item["mapping"] = {"version": mapping.version_tag,
                               "rule": str(rule.where) if rule else None}
            item["event"] = event.to_dict()
            item["identity"] = {"normalized": event.pii,
                                "hashed": {k: v for k, v in event.user_data.items()
                                           if k.endswith("_sha256")}}
            item["consent"] = event.consent
            if prepared.rejection is None:
                item["destinations"] = _destinations(config, env, event)
        results.append(item)
    return {"source": source, "account": account, "environment": environment,
            "config_hash": config.config_hash, "events": results}


def _destinations(config: CompiledConfig, env: Environment, event: Event) -> list[dict[str, Any]]:
    out = []
    body = event.to_dict()
    for name, conn in sorted(env.destinations.items()):
        dest = config.destinations.get(name)
        if dest is None:
            continue
        row: dict[str, Any] = {"destination": name, "version": dest.version_tag}
        if not conn.enabled:
            out.append({**row, "decision": "skip", "reason": "disabled"})
            continue
        result = preview(dest, conn, event, body, masked=True)
        if result["sent"]:
            row.update({"decision": "send", "platform_event": result["platform_event"],
                        "test_mode": conn.test_mode, "request": result["request"]})
        else:
            reason = result["reason"]
            row.update({"decision": "drop" if reason.startswith(("consent", "not sent"))
                        else "skip", "reason": reason})
        out.append(row)
    return out


def render_text(report: dict[str, Any]) -> str:
    """A human summary: one block per event, the decisions that matter first."""
    lines = [f"source {report['source']} · account {report['account']}/{report['environment']}"
             f" · config {report['config_hash']}"]
    for i, item in enumerate(report["events"], 1):
        event = item.get("event") or {}
        head = f"\n#{i} {item.get('source_event') or '?'} -> {event.get('event_name') or '-'}" \
               f"  [{item['status']}]"
        lines.append(head)
        if item.get("reason"):
            lines.append(f"   rejected: {item['reason']['code']}: {item['reason']['message']}")
        if not event:
            continue
        if item.get("mapping", {}).get("rule"):
            lines.append(f"   rule     {item['mapping']['rule']} ({item['mapping']['version']})")
        lines.append(f"   event_id {event.get('event_id')}   occurred_at {event.get('occurred_at')}")
        for key in ("custom_data", "context"):
            if event.get(key):
                lines.append(f"   {key:<12}" + ", ".join(f"{k}={_short(v)}"
                                                       for k, v in event[key].items()))
        ident = item.get("identity", {})
        if ident.get("normalized"):
            lines.append("   identity " + ", ".join(f"{k}={v}" for k, v in ident["normalized"].items()))
        ids = {k: v for k, v in event.get("user_data", {}).items() if not k.endswith("_sha256")}
        if ids:
            lines.append("   ids      " + ", ".join(f"{k}={_short(v)}" for k, v in ids.items()))
        if ident.get("hashed"):
            lines.append("   hashed   " + ", ".join(f"{k}={v[:12]}…" for k, v in ident["hashed"].items()))
        for dest in item.get("destinations", []):
            if dest["decision"] == "send":
                req = dest.get("request", {})
                lines.append(f"   -> {dest['destination']:<12} send {dest.get('platform_event')}"
                             f"  {req.get('method', '')} {_short(req.get('url', ''), 90)}")
            else:
                lines.append(f"   -> {dest['destination']:<12} {dest['decision']} "
                             f"({dest.get('reason')})")
    return "\n".join(lines)


def _short(value: Any, width: int = 48) -> str:
    text = str(value)
    return text if len(text) <= width else text[:width - 3] + "…"
