"""Delivery workers: one per destination, each with its own HTTP session and limits.

A worker follows the event log from its destination's cursor (the log is the queue:
ingest wrote one row per event, no per-destination rows), renders and batches what
is due per connection, sends, reads the answer with the destination's rules, and
records every outcome together with the new cursor in one transaction. Deliveries
that must wait — merge holds, retries, paused connections — become Delivery rows with
a due time, and the same worker sends them when they come due.

Isolation: a hung or failing platform stalls only its own worker; every request has
the destination's timeout, and nothing is shared between workers but the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from router.config.model import CompiledConfig, Destination, DestinationConnection
from router.delivery import outbound
from router.delivery.classify import AUTH, OK, PERMANENT, RETRY, Answer, Verdict, classify
from router.delivery.render import (
    OutgoingRequest,
    Rendered,
    RenderError,
    batches,
    build_request,
    connection_settings,
    render_payload,
    secrets_of,
)
from router.expr.functions import iso_time, parse_time
from router.pipeline.routing import QUEUED
from router.store.base import Outcome, Store, StoredEvent

log = logging.getLogger("router.delivery")

CHUNK = 500
LEASE_SECONDS = 30.0
MAX_SPLIT_DEPTH = 12


def _now_iso(ts: float | None = None) -> str:
    return iso_time(time.time() if ts is None else ts) or ""


@dataclass
class Job:
    """One delivery in flight: the stored event and the attempt count so far."""

    event: StoredEvent
    attempts: int
    queued_at: str
    rendered: Rendered | None = None


class RetryPolicy:
    """Exponential backoff with jitter; 5 attempts over about a day by default."""

    def __init__(self, config: CompiledConfig, dest: Destination):
        env_base = os.environ.get("ROUTER_RETRY_BASE_SECONDS")
        self.base = float(env_base) if env_base else (
            dest.retry_base_seconds or config.settings.retry_base_seconds)
        self.factor = dest.retry_factor
        self.max_attempts = dest.max_attempts or config.settings.max_attempts

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        backoff = self.base * self.factor ** max(0, attempts - 1) * random.uniform(0.8, 1.2)
        return max(backoff, retry_after or 0.0)


class Pacer:
    """Spaces requests to one connection at the destination's documented rate."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second
        self.next_at = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self.next_at)
        self.next_at = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class TokenCache:
    """OAuth 2.0 access tokens from refresh tokens, per connection, until they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    async def get(self, session: aiohttp.ClientSession, dest: Destination,
                  conn: DestinationConnection, account: str, environment: str) -> str | None:
        auth = dest.request.get("auth")
        if not auth:
            return None
        key = (dest.name, account, environment)
        token, expires = self._tokens.get(key, ("", 0.0))
        if token and expires > time.time() + 60:
            return token
        settings = connection_settings(dest, conn)
        context = {"settings": settings, "base_url": settings["base_url"]}
        form = {"grant_type": "refresh_token"}
        for name in ("client_id", "client_secret", "refresh_token", "scope"):
            if auth.get(name) is not None:
                value = auth[name].render(context)
                if value:
                    form[name] = str(value)
        url = str(auth["token_url"].render(context))
        async with session.post(url, data=form) as response:
            body = await response.json(content_type=None)
            if response.status != 200 or "access_token" not in (body or {}):
                raise PermissionError(f"token endpoint answered {response.status}: "
                                      f"{str(body)[:200]}")
        token = str(body["access_token"])
        self._tokens[key] = (token, time.time() + float(body.get("expires_in", 3600)))
        return token

    def forget(self, dest: str, account: str, environment: str) -> None:
        self._tokens.pop((dest, account, environment), None)


class DestinationWorker:
    def __init__(self, name: str, store: Store, get_config: Callable[[], CompiledConfig],
                 owner: str | None = None, poll_interval: float | None = None):
        self.name = name
        self.store = store
        self.get_config = get_config
        self.owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.poll = poll_interval if poll_interval is not None else \
            get_config().settings.poll_interval_ms / 1000
        self.tokens = TokenCache()
        self._session: aiohttp.ClientSession | None = None
        self._paused: set[tuple[str, str]] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._pacers: dict[tuple[str, str], Pacer] = {}
        self._cursor: int | None = None  # our position, valid while we hold the lease
        self._lease_until = 0.0
        self.sent_requests = 0

    # --- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        dest = self.get_config().destinations[self.name]
        timeout = aiohttp.ClientTimeout(total=dest.timeout_seconds)
        connector = aiohttp.TCPConnector(
            limit=max(4, dest.concurrency * 2), keepalive_timeout=60,
            resolver=outbound.GuardedResolver(lambda: self.get_config().settings.outbound))
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        try:
            while not self._stopping.is_set():
                try:
                    busy = await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s: delivery step failed; retrying", self.name)
                    busy = False
                if not busy:
                    # new events in this process wake the worker at once; the poll is for
                    # events written by other processes and for deliveries coming due
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll)
                    self._wake.clear()
        finally:
            await self._session.close()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # --- one pass ---------------------------------------------------------------------

    async def step(self) -> bool:
        """Deliver what is new in the log, then what has come due. True if work was done."""
        config = self.get_config()
        dest = config.destinations.get(self.name)
        if dest is None:
            return False
        self._paused = {(p.account, p.environment) for p in await self.store.pauses()
                        if p.destination == self.name}
        did_new = await self._from_log(config, dest)
        due = await self.store.claim_due(self.name, time.time(), CHUNK, LEASE_SECONDS)
        if due:
            # pauses as of now: a resume makes rows due in the same transaction that
            # lifts the pause, so anything claimed here sees the lifted state
            self._paused = {(p.account, p.environment) for p in await self.store.pauses()
                            if p.destination == self.name}
            jobs = [Job(d.event, d.attempts, d.queued_at) for d in due]
            outcomes = await self._deliver(config, dest, jobs)
            await self.store.record(outcomes, destination=self.name,
                                    scrub=self._scrub(config, jobs))
        return did_new or bool(due)

    async def _from_log(self, config: CompiledConfig, dest: Destination) -> bool:
        now = time.time()
        if self._cursor is not None and now < self._lease_until - LEASE_SECONDS / 2:
            # our lease is good for a while: look (a read) before writing anything, so an
            # idle router does not write to disk on every poll
            cursor = self._cursor
            if not await self.store.read_after(cursor, 1):
                return False
        else:
            claimed = await self.store.claim_cursor(self.name, self.owner, LEASE_SECONDS)
            if claimed is None:
                self._cursor = None
                return False  # another worker holds this destination
            cursor, self._cursor, self._lease_until = claimed, claimed, now + LEASE_SECONDS
        events = await self.store.read_after(cursor, CHUNK)
        if not events:
            return False
        now = time.time()
        jobs: list[Job] = []
        waiting: list[Outcome] = []
        for stored in events:
            route = stored.row.routes.get(self.name)
            if not route:
                continue
            version = dest.version_tag
            key = (stored.row.account, stored.row.environment)
            release = stored.row.release_at or 0.0
            if dest.delay_seconds:
                received = parse_time(stored.row.received_at)
                if received is not None:
                    release = max(release, received.timestamp() + dest.delay_seconds)
            if release > now:
                # held, whatever its routing says now: a merge may still change it, and
                # the decision is read again when the hold ends
                waiting.append(Outcome(stored.seq, self.name, "queued", 0, stored.row.received_at,
                                       version, last_error="held: waiting to merge or for the "
                                       "destination's delay", next_retry_at=_now_iso(release),
                                       due_at=release))
            elif route.get("status") != QUEUED:
                continue
            elif key in self._paused:
                waiting.append(Outcome(stored.seq, self.name, "queued", 0, stored.row.received_at,
                                       version, last_error="paused: credentials rejected"))
            else:
                jobs.append(Job(stored, 0, stored.row.received_at))
        outcomes = await self._deliver(config, dest, jobs) if jobs else []
        await self.store.record([*waiting, *outcomes], destination=self.name,
                                cursor=events[-1].seq, owner=self.owner,
                                scrub=self._scrub(config, jobs))
        self._cursor = events[-1].seq
        return True

    def _scrub(self, config: CompiledConfig, jobs: Sequence[Job]) -> dict[int, tuple[str, ...]]:
        """Plaintext lives only while a plaintext destination's delivery is pending."""
        out: dict[int, tuple[str, ...]] = {}
        for job in jobs:
            if job.event.row.pii:
                plain = tuple(n for n, r in job.event.row.routes.items()
                              if r.get("status") == QUEUED and n in config.destinations
                              and config.destinations[n].plaintext_pii)
                if plain:
                    out[job.event.seq] = plain
        return out

    # --- delivering a set of jobs ---------------------------------------------------------

    async def _deliver(self, config: CompiledConfig, dest: Destination,
                       jobs: list[Job]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        by_connection: dict[tuple[str, str], list[Job]] = defaultdict(list)
        for job in jobs:
            route = job.event.row.routes.get(self.name) or {}
            if route.get("status") != QUEUED:
                # decided again after a merge (or re-routed): not for this destination
                outcomes.append(self._final(dest, job, "dropped",
                                            route.get("reason") or "no longer routed here"))
                continue
            by_connection[(job.event.row.account, job.event.row.environment)].append(job)
        policy = RetryPolicy(config, dest)
        limiter = asyncio.Semaphore(dest.concurrency)
        tasks = []
        for (account, environment), group in by_connection.items():
            acc = config.accounts.get(account)
            env = acc.environments.get(environment) if acc else None
            conn = env.destinations.get(self.name) if env else None
            if conn is None or not conn.enabled:
                outcomes += [self._final(dest, job, "dropped", "destination no longer enabled "
                                         "for this account") for job in group]
                continue
            if (account, environment) in self._paused:
                outcomes += [self._waiting(dest, job, "paused: credentials rejected")
                             for job in group]
                continue
            ready: list[Rendered] = []
            by_seq = {job.event.seq: job for job in group}
            for job in group:
                try:
                    job.rendered = render_payload(dest, conn, job.event.seq, job.event.row.body,
                                                  job.event.row.pii)
                    ready.append(job.rendered)
                except RenderError as exc:
                    outcomes.append(self._final(dest, job, "dropped", str(exc), attempts=1))
            for batch in batches(dest, ready):
                tasks.append(self._send_batch(config, dest, conn, account, environment,
                                              [by_seq[r.seq] for r in batch], policy, limiter))
        for result in await asyncio.gather(*tasks):
            outcomes += result
        return outcomes

    async def _send_batch(self, config: CompiledConfig, dest: Destination,
                          conn: DestinationConnection, account: str, environment: str,
                          jobs: list[Job], policy: RetryPolicy, limiter: asyncio.Semaphore,
                          depth: int = 0) -> list[Outcome]:
        assert self._session is not None
        try:
            token = await self.tokens.get(self._session, dest, conn, account, environment)
        except PermissionError as exc:  # the token endpoint refused the credentials
            return await self._pause(dest, account, environment, jobs, f"auth: {exc}")
        except (aiohttp.ClientError, TimeoutError) as exc:  # unreachable: try again later
            verdict = Verdict(RETRY, f"token endpoint unreachable: {type(exc).__name__}: {exc}")
            return [self._after(dest, job, i, verdict, policy, None, None)
                    for i, job in enumerate(jobs)]
        rendered = [job.rendered for job in jobs if job.rendered is not None]
        request = build_request(dest, conn, rendered, [j.event.row.body for j in jobs],
                                access_token=token)
        refused = await outbound.url_refusal(config.settings.outbound, request.url)
        if refused is not None:  # the operator's outbound policy: never sent, never retried
            excerpt = request.excerpt(secrets_of(connection_settings(dest, conn), token))
            return [self._final(dest, job, "dropped", f"outbound refused: {refused}", 1,
                                excerpt) for job in jobs]
        async with limiter:
            if dest.rate_per_second:
                pacer = self._pacers.setdefault((account, environment),
                                                Pacer(dest.rate_per_second))
                await pacer.wait()
            answer = await self._send(request)
        self.sent_requests += 1
        verdict = classify(dest, answer, len(jobs))
        secrets = secrets_of(connection_settings(dest, conn), token)
        excerpt_req = request.excerpt(secrets)
        excerpt_resp = {"status": answer.status, "body": answer.body[:2048].decode(
            "utf-8", "replace"), "error": answer.error, "elapsed_ms": round(answer.elapsed_ms, 1)}
        if verdict.kind == AUTH:
            self.tokens.forget(dest.name, account, environment)
            return await self._pause(dest, account, environment, jobs, verdict.message,
                                     excerpt_req, excerpt_resp)
        if verdict.kind == PERMANENT and len(jobs) > 1 and depth < MAX_SPLIT_DEPTH:
            # isolate the bad event(s): each half is sent on its own
            half = len(jobs) // 2
            left, right = await asyncio.gather(
                self._send_batch(config, dest, conn, account, environment, jobs[:half],
                                 policy, limiter, depth + 1),
                self._send_batch(config, dest, conn, account, environment, jobs[half:],
                                 policy, limiter, depth + 1))
            return left + right
        return [self._after(dest, job, index, verdict, policy, excerpt_req, excerpt_resp)
                for index, job in enumerate(jobs)]

    async def _send(self, request: OutgoingRequest) -> Answer:
        assert self._session is not None
        started = time.perf_counter()
        try:
            # no redirects under an outbound policy: one to an IP literal would bypass it
            follow = not self.get_config().settings.outbound.active
            async with self._session.request(request.method, request.url, data=request.body,
                                             headers=request.headers,
                                             allow_redirects=follow) as response:
                body = await response.read()
                return Answer(response.status, dict(response.headers), body,
                              elapsed_ms=(time.perf_counter() - started) * 1000)
        except TimeoutError:
            return Answer(0, {}, b"", "timeout", (time.perf_counter() - started) * 1000)
        except aiohttp.ClientError as exc:
            return Answer(0, {}, b"", f"{type(exc).__name__}: {exc}",
                          (time.perf_counter() - started) * 1000)

    # --- outcomes ------------------------------------------------------------------------

    def _version(self, dest: Destination, job: Job) -> str:
        return dest.version_tag  # the version that rendered this request

    def _final(self, dest: Destination, job: Job, status: str, error: str | None,
               attempts: int | None = None, request: Any = None, response: Any = None,
               latency_ms: float | None = None) -> Outcome:
        now = time.time()
        return Outcome(job.event.seq, self.name, status,
                       job.attempts if attempts is None else attempts, job.queued_at,
                       self._version(dest, job), last_error=error, last_attempt_at=_now_iso(now),
                       latency_ms=latency_ms, request=request, response=response)

    def _waiting(self, dest: Destination, job: Job, reason: str, request: Any = None,
                 response: Any = None) -> Outcome:
        return Outcome(job.event.seq, self.name, "queued", job.attempts, job.queued_at,
                       self._version(dest, job), last_error=reason, request=request,
                       response=response, last_attempt_at=_now_iso() if request else None)

    async def _pause(self, dest: Destination, account: str, environment: str, jobs: list[Job],
                     reason: str, request: Any = None, response: Any = None) -> list[Outcome]:
        """Bad credentials burn no attempts: the connection waits for `router resume`."""
        if (account, environment) not in self._paused:
            log.warning("%s: pausing %s/%s: %s", self.name, account, environment, reason)
            await self.store.pause(self.name, account, environment, reason)
            self._paused.add((account, environment))
        return [self._waiting(dest, job, f"paused: {reason}", request, response) for job in jobs]

    def _after(self, dest: Destination, job: Job, index: int, verdict: Verdict,
               policy: RetryPolicy, request: Any, response: Any) -> Outcome:
        now = time.time()
        attempts = job.attempts + 1
        if verdict.kind == OK and index not in verdict.event_errors:
            received = parse_time(job.event.row.received_at)
            latency = (now - received.timestamp()) * 1000 if received else None
            return self._final(dest, job, "delivered", None, attempts, request, response,
                               round(latency, 1) if latency is not None else None)
        if verdict.kind == OK:  # this event was rejected inside a successful request
            return self._final(dest, job, "dropped", verdict.event_errors[index], attempts,
                               request, response)
        if verdict.kind == PERMANENT:
            return self._final(dest, job, "dropped", verdict.message, attempts, request, response)
        assert verdict.kind == RETRY
        if attempts >= policy.max_attempts:
            return self._final(dest, job, "dropped", f"gave up after {attempts} attempts: "
                               f"{verdict.message}", attempts, request, response)
        due = now + policy.delay(attempts, verdict.retry_after)
        return Outcome(job.event.seq, self.name, "failed", attempts, job.queued_at,
                       self._version(dest, job), last_error=verdict.message,
                       last_attempt_at=_now_iso(now), next_retry_at=_now_iso(due), due_at=due,
                       request=request, response=response)


class Workers:
    """All destination workers of one process."""

    def __init__(self, store: Store, get_config: Callable[[], CompiledConfig]):
        self.store = store
        self.get_config = get_config
        self.workers: dict[str, DestinationWorker] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        self.sync()

    def sync(self) -> None:
        """Start workers for destinations that appeared (after a reload)."""
        for name in self.get_config().destinations:
            if name not in self.workers:
                worker = DestinationWorker(name, self.store, self.get_config)
                self.workers[name] = worker
                self.tasks[name] = asyncio.create_task(worker.run(), name=f"deliver-{name}")

    def notify(self) -> None:
        """Events were committed: every worker looks at the log now."""
        for worker in self.workers.values():
            worker.wake()

    async def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        if self.tasks:
            await asyncio.wait(self.tasks.values(), timeout=15)
        for task in self.tasks.values():
            if not task.done():
                task.cancel()
