"""The Markdown summary of one `python -m bench` result file.

    python -m bench.report bench/results/<timestamp>.json   # render it again
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**not met**")


def _cpu(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return ""
    return ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items())


def render(r: dict[str, Any]) -> str:
    t = r.get("targets", {})
    m = r.get("machine", {})
    out = [f"# Benchmark {r.get('started_at', '')[:19]}Z ({'quick' if r.get('quick') else 'full'}"
           f" run, {_n(r.get('duration_s'))} s)", "",
           f"`{r.get('command')}` on {m.get('nproc')} x {m.get('cpu_model')}, "
           f"{m.get('memory_gib')} GiB, Python {m.get('python')}, aiohttp {m.get('aiohttp')}, "
           f"orjson {m.get('orjson')}, SQLite {m.get('sqlite')}, event loop "
           f"{m.get('event_loop')}. Engine: commit {r.get('git', {}).get('commit')}"
           f"{' (router/ modified)' if r.get('git', {}).get('router_modified') else ''}.", "",
           f"Load: {r.get('load_generator')}. Baseline: {r.get('baseline')}. "
           f"Sink: {r.get('sink')}.", ""]
    if r.get("working_tree_changed_during_run"):
        out += ["Note: router/ or the shipped config in the working tree changed while this "
                "run was going on; every process ran on the copy taken at the start "
                f"(fingerprint {r.get('engine_fingerprint')}).", ""]
    ingest = r.get("ingest")
    workers = r.get("ingest_with_workers")
    multi = r.get("multi_ingest")
    if ingest:
        b = ingest["baseline_single"]
        rs = ingest["router_single"]
        out += ["## 1. Single-event ingest (POST /v1/track, ~1.1 KB Order Completed)", "",
                "| run | events/s | p50 ms | p99 ms | errors | ratio to baseline | target | "
                "met | CPU (% of a core) |",
                "|---|---:|---:|---:|---:|---:|---|---|---|",
                f"| bare aiohttp baseline, before | {_n(b['before']['events_per_s'])} | "
                f"{b['before']['p50_ms']} | {b['before']['p99_ms']} | {b['before']['errors']} "
                f"| 1.00 | | | {_cpu(b['before'].get('cpu_percent_of_one_core'))} |",
                f"| bare aiohttp baseline, after | {_n(b['after']['events_per_s'])} | "
                f"{b['after']['p50_ms']} | {b['after']['p99_ms']} | {b['after']['errors']} | "
                f"1.00 | | | {_cpu(b['after'].get('cpu_percent_of_one_core'))} |",
                f"| router serve --role gateway (ingest path) | {_n(rs['events_per_s'])} | "
                f"{rs['p50_ms']} | {rs['p99_ms']} | {rs['errors']} | "
                f"{rs['ratio_to_baseline']:.3f} | ≥ {t.get('single_ratio')} | "
                f"{_met(rs['ratio_to_baseline'] >= t.get('single_ratio', 0.6))} | "
                f"{_cpu(rs.get('cpu_percent_of_one_core'))} |"]
        if workers and "router_single" in workers:
            w = workers["router_single"]
            ratio = w.get("ratio_to_baseline")
            out.append(f"| router serve (delivery in-process) | {_n(w['events_per_s'])} | "
                       f"{w['p50_ms']} | {w['p99_ms']} | {w['errors']} | {_n(ratio, 3)} | "
                       f"≥ {t.get('single_ratio')} | "
                       f"{_met(ratio >= t.get('single_ratio', 0.6) if ratio else None)} | "
                       f"{_cpu(w.get('cpu_percent_of_one_core'))} |")
        if multi and "router_single" in multi:
            ms = multi["router_single"]
            out.append(f"| 2 x serve --role gateway --reuse-port | {_n(ms['events_per_s'])} | "
                       f"{ms['p50_ms']} | {ms['p99_ms']} | {ms['errors']} | "
                       f"{_n(ms.get('ratio_to_baseline_2proc'), 3)} (to 2 baseline processes) "
                       f"| | | {_cpu(ms.get('cpu_percent_of_one_core'))} |")
        out += ["", f"Router CPU per event (ingest path): {rs.get('cpu_ms_per_event')} ms; "
                f"events per group-commit transaction under load: "
                f"{rs.get('events_per_transaction')}; CPU outside the event-loop thread "
                f"(SQLite writer/reader threads): "
                f"{_n(100 * (rs.get('threads', {}).get('other_threads_share') or 0), 0)}%.", "",
                "Fixed offered rate (open loop; latency from the moment each request was due):",
                "", "| offered events/s | achieved events/s | p50 ms | p99 ms | unfinished | "
                "sustained |", "|---:|---:|---:|---:|---:|---|"]
        fixed = list(ingest.get("router_single_fixed_rate", []))
        if ingest.get("router_single_low_rate"):
            fixed.append(ingest["router_single_low_rate"])
        for f in fixed:
            out.append(f"| {_n(f['offered_per_s'])} | {_n(f['events_per_s'])} | {f['p50_ms']} | "
                       f"{f['p99_ms']} | {f['unfinished']} | {_n(f['sustained'])} |")
        out.append("")
        if workers and workers.get("idle"):
            idle = workers["idle"]
            out += [f"Idle `router serve` (delivery workers running, no traffic, "
                    f"{idle['seconds']} s): {idle['cpu_percent_of_one_core']}% of a core, "
                    f"{_n(idle['disk_write_kb_per_s'])} KiB/s written to disk, "
                    f"{_n(idle['write_syscalls_per_s'])} write syscalls/s.", ""]
    if ingest or workers or multi:
        out += ["## 2. Batched ingest (POST /v1/batch, 100 events a request, 8 connections)",
                "", "| run | events/s | p50 ms/request | p99 ms/request | ratio to baseline | "
                "target | met |", "|---|---:|---:|---:|---:|---|---|"]
        target = t.get("batch_events_per_s", 20000)
        if ingest:
            bb, rb = ingest["baseline_batch100"], ingest["router_batch100"]
            out.append(f"| bare aiohttp baseline | {_n(bb['events_per_s'])} | {bb['p50_ms']} | "
                       f"{bb['p99_ms']} | 1.00 | | |")
            out.append(f"| router serve --role gateway | {_n(rb['events_per_s'])} | {rb['p50_ms']} "
                       f"| {rb['p99_ms']} | {rb['ratio_to_baseline']:.3f} | ≥ {target:,} "
                       f"| {_met(rb['events_per_s'] >= target)} |")
        if workers and "router_batch100" in workers:
            wb = workers["router_batch100"]
            out.append(f"| router serve (delivery in-process) | {_n(wb['events_per_s'])} | "
                       f"{wb['p50_ms']} | {wb['p99_ms']} | | ≥ {target:,} | "
                       f"{_met(wb['events_per_s'] >= target)} |")
        if multi and "router_batch100" in multi:
            mb = multi["router_batch100"]
            out.append(f"| 2 x serve --role gateway --reuse-port | {_n(mb['events_per_s'])} | "
                       f"{mb['p50_ms']} | {mb['p99_ms']} | | (one process: target) | "
                       f"{_n(mb.get('ratio_to_one_process'), 2)}x one process |")
        out.append("")
    for key, title in (("e2e", "one process (`router serve`)"),
                       ("multi_e2e", "multi-process (2 x `serve --role gateway --reuse-port` + "
                                     "`router worker`)")):
        runs = r.get(key, {}).get("runs", [])
        if not runs:
            continue
        out += [f"## 3. End to end, {title}", "",
                "Latency: sink `received_at` (sandbox clock) minus the time the ingest "
                "request was due (load-generator clock; same host), per destination request "
                "traced by the event's messageId or order id.", "",
                "All 13 destinations; p50/p99 over every (event, destination) pair, "
                "including pairs still undelivered when the drain wait ended (counted at "
                "their age then).", "",
                "The shipped config itself rules the target out for some destinations: a "
                "hold before sending (`delay_seconds`: Awin's 30 s), a rate limit below the "
                "offered rate (`rate_limit.per_second` x `batch.max_events`: Klaviyo's 58 "
                "events/s), or requests paced further apart than the p50 target (LinkedIn "
                "and Snapchat: 10 requests/s). The 'engine-bound' columns leave those out.",
                "",
                "| offered events/s | sustained | e2e p50 ms | e2e p99 ms | target: p50 ≤ "
                f"{t.get('e2e_p50_ms'):.0f}, p99 ≤ {t.get('e2e_p99_ms'):.0f} at "
                f"{_n(t.get('e2e_rate'))}/s | engine-bound p50 / p99 ms (left out) | "
                "ingest p50 / p99 ms | deliveries received / expected |",
                "|---:|---|---:|---:|---|---|---|---|"]
        for run in runs:
            p50, p99 = run["e2e_p50_ms"], run["e2e_p99_ms"]
            ok = (p50 is not None and p50 <= t.get("e2e_p50_ms", 25)
                  and p99 <= t.get("e2e_p99_ms", 100) and run["sustained"])
            factor = (f"p50 {p50 / t.get('e2e_p50_ms', 25):,.1f}x, p99 "
                      f"{p99 / t.get('e2e_p99_ms', 100):,.1f}x the target" if p50 else "")
            verdict = (_met(ok) if run["offered_per_s"] >= t.get("e2e_rate", 500)
                       else "(below the target rate)")
            out.append(f"| {_n(run['offered_per_s'])} | {_n(run['sustained'])} | "
                       f"{_n(p50, 1)} | {_n(p99, 1)} | {verdict} {factor} | "
                       f"{_n(run.get('e2e_engine_p50_ms'), 1)} / "
                       f"{_n(run.get('e2e_engine_p99_ms'), 1)} "
                       f"({', '.join(run.get('unreachable_by_config') or []) or 'none'}) | "
                       f"{run['ingest']['p50_ms']} / {run['ingest']['p99_ms']} | "
                       f"{_n(run['deliveries_received'])} / {_n(run['deliveries_expected'])} |")
        out.append("")
        for run in runs:
            samples = run.get("rss_kb_samples") or []
            rss = ""
            if len(samples) >= 2:
                rss = "; RSS MiB " + ", ".join(
                    f"{name} {samples[0][1].get(name, 0) / 1024:.0f} → "
                    f"{samples[-1][1].get(name, 0) / 1024:.0f}" for name in samples[-1][1])
            gaps = run.get("sink", {}).get("possible_gaps")
            gap_note = f"; WARNING: the sink list may have wrapped {gaps} time(s)" if gaps else ""
            waited = (f"; not awaited (hold longer than the drain wait): "
                      f"{', '.join(run['not_awaited'])}" if run.get("not_awaited") else "")
            out += [f"Per destination at {_n(run['offered_per_s'])} events/s offered "
                    f"({run['seconds']} s; CPU: {_cpu(run.get('cpu_percent_of_one_core'))}"
                    f"{rss}{gap_note}{waited}):",
                    "", "| destination | rules the target out (config) | requests | delivered | missing at end "
                    "of wait | p50 ms | p99 ms | delivered/s during ingest | drain s | kept up | "
                    "admin latency_ms p50 / p99 (n) |",
                    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
            for dest, d in run["destinations"].items():
                limit = d.get("target_unreachable_by_config")
                limit = limit if isinstance(limit, list) else []
                out.append(f"| {dest} | {'; '.join(limit) or '-'} | {_n(d['requests'])} | "
                           f"{_n(d['delivered'])} | "
                           f"{_n(d['missing'])} | {_n(d['p50_ms'], 1)} | {_n(d['p99_ms'], 1)} | "
                           f"{_n(d['delivered_per_s_during_ingest'], 1)} | {_n(d['drain_s'], 1)} "
                           f"| {_n(d['kept_up'])} | {_n(d['admin_latency_p50_ms'], 1)} / "
                           f"{_n(d['admin_latency_p99_ms'], 1)} ({d['admin_sample']}) |")
            out.append("")
        out += [f"## 4. Fan-out, {title}", "",
                "| offered events/s | deliveries/s during ingest | needed (13 x rate) | "
                "drain time after ingest stops | waited |", "|---:|---:|---:|---:|---:|"]
        for run in runs:
            drain = (f"{run['drain_s']:.1f} s" if run["drain_s"] is not None
                     else f"not drained ({_n(run['deliveries_expected'] - run['deliveries_received'])} "
                          "deliveries left)")
            out.append(f"| {_n(run['offered_per_s'])} | {_n(run['deliveries_per_s_during_ingest'])}"
                       f" | {_n(13 * run['offered_per_s'])} | {drain} | "
                       f"{run['drain_waited_s']} s |")
        out.append("")
    mem = r.get("memory")
    if mem:
        n1, n2 = mem["n1"], mem["n2"]
        a, b = mem.get(f"after_{n1}", {}), mem.get(f"after_{n2}", {})
        growth = mem.get("growth_rss")
        out += ["## 5. Memory (router RSS, batched ingest)", "", f"Mode: {mem['mode']}; "
                f"{_n(mem.get('events_per_s'))} events/s.", "",
                "| point | events | VmRSS MiB | VmHWM (peak) MiB |", "|---|---:|---:|---:|",
                f"| start | 0 | {_n(mem['rss_start_kb'].get('VmRSS', 0) / 1024, 1)} | "
                f"{_n(mem['rss_start_kb'].get('VmHWM', 0) / 1024, 1)} |"]
        for label, point in ((f"after N1 = {n1:,}", a), (f"after N2 = {n2:,}", b)):
            if point:
                out.append(f"| {label} | {_n(point['events'])} | {_n(point['VmRSS'] / 1024, 1)} "
                           f"| {_n(point['VmHWM'] / 1024, 1)} |")
        out += ["", f"Growth N1 → N2: RSS {_n(100 * growth, 1) if growth is not None else '-'}%,"
                f" peak {_n(100 * mem['growth_hwm'], 1) if mem.get('growth_hwm') is not None else '-'}%"
                f" (target ≤ {100 * t.get('rss_growth', 0.1):.0f}%: "
                f"{_met(growth <= t.get('rss_growth', 0.1) if growth is not None else None)}"
                f"{'' if (n1, n2) == (100_000, 1_000_000) else f'; measured at {n1:,} → {n2:,}, not 100k → 1M as in the issue'}).", ""]
    prof = r.get("profile")
    if prof:
        out += ["## 6. CPU profile (cProfile)", ""]
        for key, title in (("ingest", "ingest path: `router serve --role gateway`, single events"),
                           ("delivery", "delivery: `router worker`, 13 destinations")):
            p = prof.get(key, {})
            if "own_time_top" not in p:
                out += [f"{title}: {p.get('error', 'missing')}", ""]
                continue
            threads = prof.get(f"{key}_threads")
            note = (f"; {100 * threads['other_threads_share']:.0f}% of the process CPU ran in "
                    "other threads (SQLite writer/reader), which cProfile does not see"
                    if threads and threads.get("other_threads_share") is not None else "")
            out += [f"**{title}** ({p['prof']}, {p['text']}): {p['busy_s']} s busy of "
                    f"{p['total_s']} s profiled (idle in epoll {p['idle_s']} s, start-up "
                    f"{p['startup_s']} s) over {_n(p['events'])} events = "
                    f"{p['busy_ms_per_event']} ms per {p['per']} under cProfile{note}.", "",
                    "| own time: function | calls | own s | share of busy | ms per event |",
                    "|---|---:|---:|---:|---:|"]
            for row in p["own_time_top"][:12]:
                out.append(f"| `{row['function']}` | {_n(row['calls'])} | {row['own_s']} | "
                           f"{100 * row['share']:.1f}% | {row['ms_per_event']} |")
            out += ["", "| cumulative (router code): function | cum s | share of busy | ms per "
                    "event |", "|---|---:|---:|---:|"]
            for row in p["cumulative_top"][:18]:
                out.append(f"| `{row['function']}` | {row['cum_s']} | {100 * row['share']:.1f}% | "
                           f"{row['ms_per_event']} |")
            out.append("")
    if r.get("failures"):
        out += ["## Failures", ""]
        for name, text in r["failures"].items():
            out += [f"- {name}: `{text.strip().splitlines()[-1]}`"]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        print(render(json.load(fh)))
