"""The `router` command. Each command is thin: it parses options and calls one function."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

from router.config.compile import check_config
from router.config.issues import ERROR, WARNING, format_issues

CONFIG_DIR = click.option("--config-dir", default=".", show_default=True,
                          type=click.Path(file_okay=False),
                          help="Directory holding configs/, mappings/ and destinations.d/.")


def _load_or_exit(config_dir: str) -> Any:
    config, issues = check_config(config_dir)
    if config is None:
        click.echo(format_issues([i for i in issues if i.severity == ERROR], "text"), err=True)
        click.echo(f"\nconfiguration in {config_dir} is invalid; run `router validate`", err=True)
        sys.exit(1)
    return config


@click.group()
@click.version_option(package_name="router")
def main() -> None:
    """Declarative server-side event router for conversion tracking."""


@main.command()
@CONFIG_DIR
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text",
              show_default=True, help="text for people, github for Actions annotations, json for tools.")
@click.option("--strict", is_flag=True, help="Treat warnings as failures.")
def validate(config_dir: str, fmt: str, strict: bool) -> None:
    """Check every config file and report every problem with file:line:col."""
    _, issues = check_config(config_dir)
    errors = [i for i in issues if i.severity == ERROR]
    warnings = [i for i in issues if i.severity == WARNING]
    if issues or fmt == "json":
        click.echo(format_issues(issues, fmt))
    if fmt == "text":
        summary = f"{len(errors)} error(s), {len(warnings)} warning(s)"
        ok = not errors and not (strict and warnings)
        click.echo(("ok: " if ok else "invalid: ") + summary)
    if errors or (strict and warnings):
        sys.exit(1)


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    meta = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        key, value = pair.split("=", 1)
        meta[key.strip()] = value
    return meta


def _default_account(config: Any, account: str | None, env: str | None) -> tuple[str, str]:
    if account is None:
        if len(config.accounts) != 1:
            raise click.UsageError("several accounts are configured; pass --account")
        account = next(iter(config.accounts))
    acc = config.accounts.get(account)
    if acc is None:
        raise click.UsageError(f"unknown account {account!r}; known: {', '.join(config.accounts)}")
    if env is None:
        env = "production" if "production" in acc.environments else next(iter(acc.environments))
    return account, env


@main.command()
@CONFIG_DIR
@click.option("--source", required=True, help="Source name: segment, rudderstack, shopify, pixel, ...")
@click.option("--account", default=None, help="Account (default: the only one configured).")
@click.option("--env", "environment", default=None, help="Environment (default: production).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE",
              help="Request metadata the endpoint would add, e.g. topic=orders/create for Shopify.")
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json", show_default=True)
@click.argument("payload", type=click.File("rb"))
def explain(config_dir: str, source: str, account: str | None, environment: str | None,
            meta: tuple[str, ...], fmt: str, payload: Any) -> None:
    """Show what the router would do with PAYLOAD (a file, or - for stdin). Sends nothing."""
    from router.review.explain import explain as run_explain
    from router.review.explain import render_text

    config = _load_or_exit(config_dir)
    account, environment = _default_account(config, account, environment)
    raw = payload.read()
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.UsageError(f"{payload.name}: not valid JSON: {exc}") from None
    try:
        report = run_explain(config, source, document, account=account, environment=environment,
                             meta=_parse_meta(meta))
    except KeyError as exc:
        raise click.UsageError(str(exc.args[0])) from None
    if fmt == "text":
        click.echo(render_text(report))
    else:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


@main.command()
@CONFIG_DIR
@click.option("--store", "store_url", default=None,
              help="Store URL (default: store.url in configs/router.yaml, sqlite:///./router.db).")
@click.option("--host", default=None, help="Bind address (default: server.host).")
@click.option("--port", type=int, default=None, help="Port (default: server.port).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              help="Our own loggers' level; other libraries log WARNING and above only.")
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]),
              help="text: key=value fields after the message; json: one object per line.")
@click.option("--role", "roles", default="gateway,processor,delivery", show_default=True,
              help="Which stages this process runs: gateway (acknowledge ingest), processor "
                   "(map, dedup, route after the acknowledgement), delivery. Several processes "
                   "with different roles can share one store.")
@click.option("--workers/--no-workers", default=True, show_default=True,
              help="--no-workers drops the delivery role (run `router worker` beside it).")
@click.option("--sandbox", is_flag=True,
              help="Also run `router sandbox` in this process, so the demo delivers end to end.")
@click.option("--sandbox-port", type=int, default=8765, show_default=True)
@click.option("--watch", is_flag=True, help="Reload the config when a file changes (SIGHUP "
              "always reloads).")
@click.option("--reuse-port", is_flag=True,
              help="SO_REUSEPORT: run several `router serve --no-workers` on one port, one per "
                   "core, beside one `router worker`.")
def serve(config_dir: str, store_url: str | None, host: str | None, port: int | None,
          log_level: str, log_format: str, roles: str, workers: bool, sandbox: bool,
          sandbox_port: int, watch: bool, reuse_port: bool) -> None:
    """Run the router service (ingest endpoints, pixel, admin API, processing, delivery)."""
    from router.server.runtime import parse_roles
    from router.server.serve import run

    try:
        chosen = parse_roles(roles)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--role") from None
    if not workers:
        chosen = chosen - {"delivery"}
    if not chosen:
        raise click.BadParameter("no role left to run", param_hint="--role")
    config = _load_or_exit(config_dir)
    try:
        run(config, store_url=store_url, host=host, port=port, log_level=log_level,
            roles=chosen, sandbox_port=sandbox_port if sandbox else None, watch=watch,
            reuse_port=reuse_port, log_format=log_format)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.command("test")
@CONFIG_DIR
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--update", is_flag=True, help="Rewrite the golden files with the actual outputs.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML here.")
@click.option("-k", "match", default=None, help="Only cases whose name contains this text.")
def test_command(config_dir: str, paths: tuple[str, ...], update: bool, junit: str | None,
                 match: str | None) -> None:
    """Run config test files (default: tests/config/) in-process; nothing is sent."""
    from router.review.testing import discover, run_file, write_junit

    config = _load_or_exit(config_dir)
    files = discover(config_dir, paths)
    if not files:
        raise click.UsageError(f"no test files found (looked in {paths or 'tests/config'})")
    runs = [run_file(config, path, update=update, match=match) for path in files]
    passed = failed = 0
    for run in runs:
        for issue in run.issues:
            click.echo(issue.text(), err=issue.severity == "error")
        for result in run.results:
            if result.passed:
                passed += 1
                continue
            failed += 1
            click.echo(f"FAIL {result.where} {result.name}")
            for failure in result.failures:
                click.echo("    " + failure.replace("\n", "\n    "))
        if run.golden_changed:
            click.echo(f"updated {run.path.with_name(run.path.stem + '.golden.json')}")
    errors = sum(1 for run in runs for i in run.issues if i.severity == "error")
    if junit:
        write_junit(runs, junit)
    click.echo(f"{passed} passed, {failed} failed" + (f", {errors} file error(s)" if errors else ""))
    if failed or errors:
        sys.exit(1)


@main.command()
@click.argument("dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--git", "revision", default=None, help="Compare this git revision with the working tree.")
@CONFIG_DIR
@click.option("--corpus", type=click.Path(exists=True, file_okay=False),
              help="Sample payloads: DIR/<source>/*.json, or files {source, input, meta}.")
@click.option("--store", "store_url", default=None, help="Replay recent stored events from here.")
@click.option("--last", type=int, default=1000, show_default=True,
              help="How many recent stored events to replay with --store.")
@click.option("--account", default=None, help="Account whose connections are compared.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text",
              show_default=True)
@click.option("--fail-on", type=click.Choice(["breaking", "any", "never"]), default="breaking",
              show_default=True)
def diff(dirs: tuple[str, ...], revision: str | None, config_dir: str, corpus: str | None,
         store_url: str | None, last: int, account: str | None, fmt: str, fail_on: str) -> None:
    """What changed between two configs, and which events it changes.

    router diff OLD_DIR NEW_DIR   or   router diff --git HEAD [--config-dir DIR]"""
    import asyncio

    from router.review.diff import diff_configs, export_git, recent_events, render, temp_dir

    if (revision and dirs) or (not revision and len(dirs) != 2):
        raise click.UsageError("give OLD and NEW config dirs, or --git REV")
    stored = asyncio.run(recent_events(store_url, last)) if store_url else None
    with temp_dir() as tmp:
        if revision:
            import subprocess

            try:
                old = export_git(revision, config_dir, tmp)
            except subprocess.CalledProcessError as exc:
                raise click.UsageError(f"git could not export {revision!r}: "
                                       f"{(exc.stderr or b'').decode().strip()}") from None
            new = config_dir
        else:
            old, new = dirs
        report = diff_configs(old, new, corpus=corpus, stored=stored, account=account)
        report.old = f"git:{revision}" if revision else old
        click.echo(render(report, fmt), nl=False)
    failed = (fail_on == "breaking" and report.breaking) or (
        fail_on == "any" and (report.breaking or report.findings))
    if failed:
        sys.exit(1)


STORE = click.option("--store", "store_url", default=None,
                     help="Store URL (default: store.url in configs/router.yaml).")


@main.command()
@CONFIG_DIR
@STORE
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]))
@click.option("--role", "roles", default="delivery", show_default=True,
              help="processor and/or delivery: the stages after the acknowledgement, without "
                   "an HTTP server (beside `router serve --role gateway` or --no-workers).")
def worker(config_dir: str, store_url: str | None, log_level: str, log_format: str,
           roles: str) -> None:
    """Run stages without HTTP: delivery (default) and/or the processor."""
    from router.server.runtime import parse_roles
    from router.server.serve import run_workers

    try:
        chosen = parse_roles(roles)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--role") from None
    if "gateway" in chosen:
        raise click.BadParameter("the gateway needs HTTP: run it with `router serve --role "
                                 "gateway`", param_hint="--role")
    config = _load_or_exit(config_dir)
    _check_store_url(config, store_url)
    run_workers(config, store_url=store_url, log_level=log_level, roles=chosen,
                log_format=log_format)


@main.command()
@CONFIG_DIR
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
def sandbox(config_dir: str, host: str, port: int) -> None:
    """A local imitation of every destination, with failure injection (see /_sandbox/*)."""
    from router.server.serve import run_sandbox

    run_sandbox(_load_or_exit(config_dir), host=host, port=port)


def _check_store_url(config: Any, store_url: str | None) -> None:
    """An unusable store URL is a usage error (exit 2), reported before any work."""
    from router.store import open_store

    try:
        open_store(store_url or config.settings.store_url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _with_store(config_dir: str, store_url: str | None, action: Any) -> Any:
    import asyncio

    from router.store import open_store

    config = _load_or_exit(config_dir)
    _check_store_url(config, store_url)

    async def go() -> Any:
        store = open_store(store_url or config.settings.store_url)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


@main.command()
@CONFIG_DIR
@STORE
@click.option("--destination", default=None)
@click.option("--account", default=None)
def resume(config_dir: str, store_url: str | None, destination: str | None,
           account: str | None) -> None:
    """Resume connections paused by rejected credentials; their deliveries go out."""
    lifted = _with_store(config_dir, store_url,
                         lambda store: store.resume(destination, account))
    click.echo(f"resumed {lifted} paused connection(s)")


def _since(value: str | None) -> str | None:
    import re
    from datetime import UTC, datetime, timedelta

    from router.expr.functions import iso_time

    if not value:
        return None
    match = re.fullmatch(r"(\d+)([smhd])", value.strip())
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return iso_time(datetime.now(UTC) - timedelta(seconds=seconds))
    parsed = iso_time(value)
    if parsed is None:
        raise click.BadParameter(f"{value!r} is neither a duration (24h, 30m) nor a time",
                                 param_hint="--since")
    return parsed


@main.command()
@CONFIG_DIR
@STORE
@click.option("--since", default="24h", show_default=True, help="A duration (24h, 7d) or a time.")
@click.option("--destination", default=None)
@click.option("--status", "statuses", default="failed,dropped", show_default=True)
@click.option("--event-id", default=None)
@click.option("--account", default=None)
def replay(config_dir: str, store_url: str | None, since: str, destination: str | None,
           statuses: str, event_id: str | None, account: str | None) -> None:
    """Re-queue deliveries (same event, same event_id, so platforms deduplicate)."""
    wanted = tuple(s.strip() for s in statuses.split(",") if s.strip())
    count = _with_store(config_dir, store_url, lambda store: store.requeue(
        since=_since(since), destination=destination, statuses=wanted, event_id=event_id,
        account=account))
    click.echo(f"re-queued {count} deliveries")


@main.command()
@CONFIG_DIR
@click.option("--url", default=None, envvar="ROUTER_URL",
              help="The running router (default: http://server.host:server.port of the config; "
                   "env ROUTER_URL).")
@click.option("--token", default=None, envvar="ROUTER_ADMIN_TOKEN",
              help="Admin bearer token (default: env ROUTER_ADMIN_TOKEN, else admin.token).")
@click.option("--event", default=None, help="Canonical event name (purchase, lead, ...).")
@click.option("--destination", default=None, help="Deliveries to it, and events queued for it.")
@click.option("--status", default=None, type=click.Choice(
    ["accepted", "duplicate", "unmapped", "rejected", "delivered", "failed", "dropped",
     "paused", "queued"]), help="Only items with this status.")
@click.option("--account", default=None)
@click.option("--environment", default=None)
@click.option("--source", default=None)
@click.option("--type", "kind", default=None, type=click.Choice(["event", "delivery"]),
              help="Only events (as decided) or only delivery outcomes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--color/--no-color", "colour", default=None,
              help="Colour the status (default: when writing to a terminal).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many items.")
def tail(config_dir: str, url: str | None, token: str | None, event: str | None,
         destination: str | None, status: str | None, account: str | None,
         environment: str | None, source: str | None, kind: str | None, as_json: bool,
         colour: bool | None, count: int | None) -> None:
    """Follow what the router decides and delivers, live (one line each)."""
    import asyncio

    from router.ops.tail import TailError
    from router.ops.tail import tail as follow

    if url is None or token is None:
        config = _load_or_exit(config_dir)
        settings = config.settings
        url = url or f"http://{settings.host}:{settings.port}"
        token = token or settings.admin_token
    if not token:
        raise click.UsageError("no admin token: set ROUTER_ADMIN_TOKEN or pass --token")
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http(s) URL", param_hint="--url")
    filters = {"event": event, "destination": destination, "status": status,
               "account": account, "environment": environment, "source": source, "type": kind}
    try:
        asyncio.run(follow(url, token, filters, as_json=as_json,
                           colour=sys.stdout.isatty() if colour is None else colour,
                           count=count))
    except TailError as exc:
        click.echo(f"router tail: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":  # pragma: no cover
    main()
