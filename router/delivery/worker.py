"""One destination's worker: render, batch, send (several requests in flight), classify.

The delivery plane claims due deliveries and hands them over in memory; the worker
groups them per connection (account and environment), renders each payload, packs
batches within the destination's limits, and sends them with at most `concurrency`
requests in flight and the platform's documented pace per connection, over one
keep-alive connection pool. Each answer is read with the destination's rules and
becomes outcomes, which the outcome writer commits together with every other
destination's.

Isolation: a hung or failing platform stalls only its own worker (each request has the
destination's timeout); an event whose payload or request cannot be built fails alone
with its reason, and the rest of its batch goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from router.config.model import CompiledConfig, Destination, DestinationConnection
from router.delivery import outbound, transport
from router.delivery.age import too_old
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
from router.delivery.retry import RetryPolicy
from router.expr.functions import iso_time, parse_time
from router.scheduling import Governor, Slicer
from router.store.base import DueDelivery, Outcome, RequestExcerpt

if TYPE_CHECKING:
    from router.delivery.outcomes import OutcomeWriter

log = logging.getLogger("router.delivery")

MAX_SPLIT_DEPTH = 12
MAX_HELD = 2000  # claimed jobs one worker holds at most (bounds each claim transaction)


def _now_iso(ts: float | None = None) -> str:
    return iso_time(time.time() if ts is None else ts) or ""


@dataclass
class Job:
    """One claimed delivery in this process's memory until its outcome is written."""

    due: DueDelivery
    claimed_at: float
    rendered: Rendered | None = None

    @property
    def seq(self) -> int:
        return self.due.event.seq

    @property
    def body(self) -> dict[str, Any]:
        return self.due.event.row.body


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
        if not auth or auth.get("type") != "oauth2_refresh_token":
            return None  # no auth, or a scheme that signs each request (render.py)
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


class Pauses:
    """Paused connections, held in memory; the plane reloads them when they change."""

    def __init__(self) -> None:
        self.by_destination: dict[str, set[tuple[str, str]]] = defaultdict(set)

    def replace(self, pairs: Sequence[tuple[str, str, str]]) -> None:
        self.by_destination = defaultdict(set)
        for destination, account, environment in pairs:
            self.by_destination[destination].add((account, environment))

    def paused(self, destination: str, account: str, environment: str) -> bool:
        return (account, environment) in self.by_destination.get(destination, ())


@dataclass
class WorkerStats:
    requests: int = 0
    events_sent: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class DestinationWorker:
    """Delivers one destination's claimed jobs; see the module docstring."""

    def __init__(self, name: str, get_config: Callable[[], CompiledConfig],
                 writer: OutcomeWriter, pauses: Pauses,
                 pause: Callable[[str, str, str, str], Any], governor: Governor):
        self.name = name
        self.get_config = get_config
        self.writer = writer
        self.pauses = pauses
        self._pause_store = pause
        self.governor = governor
        self.tokens = TokenCache()
        self.stats = WorkerStats()
        self.queue: deque[Job] = deque()
        self.held: dict[int, Job] = {}  # claimed, outcome not yet committed
        self._session: aiohttp.ClientSession | None = None
        self._pacers: dict[tuple[str, str], Pacer] = {}
        self._arrived = asyncio.Event()
        self._stopping = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None

    # --- capacity -------------------------------------------------------------------------

    def _dest(self) -> Destination | None:
        return self.get_config().destinations.get(self.name)

    def concurrency(self, config: CompiledConfig, dest: Destination) -> int:
        return dest.concurrency or config.settings.concurrency_per_destination

    def capacity(self) -> int:
        """How many jobs this worker holds at most: enough to fill every request slot
        twice over, so claiming runs ahead of sending without hoarding."""
        config = self.get_config()
        dest = config.destinations.get(self.name)
        if dest is None:
            return 0
        return min(MAX_HELD, max(100, 2 * dest.max_events * self.concurrency(config, dest)))

    def room(self) -> int:
        return 0 if self._stopping else max(0, self.capacity() - len(self.held))

    def enqueue(self, dues: Sequence[DueDelivery], now: float) -> None:
        for due in dues:
            if due.event.seq in self.held:
                continue  # re-claimed while we still hold it (our own lease renewal raced)
            job = Job(due, now)
            self.held[due.event.seq] = job
            self.queue.append(job)
        if self.queue:
            self._arrived.set()

    def finished(self, seqs: Sequence[int]) -> None:
        """Outcomes of these jobs are committed: they leave memory."""
        for seq in seqs:
            self.held.pop(seq, None)

    def held_since(self, before: float) -> list[int]:
        return [seq for seq, job in self.held.items() if job.claimed_at < before]

    def renewed(self, seqs: Sequence[int], now: float) -> None:
        for seq in seqs:
            job = self.held.get(seq)
            if job is not None:
                job.claimed_at = now

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        config = self.get_config()
        dest = config.destinations[self.name]
        concurrency = self.concurrency(config, dest)
        self._slots = asyncio.Semaphore(concurrency)
        timeout = aiohttp.ClientTimeout(total=dest.timeout_seconds)
        connector = aiohttp.TCPConnector(
            limit=max(4, concurrency * 2), keepalive_timeout=60,
            resolver=outbound.GuardedResolver(lambda: self.get_config().settings.outbound))
        # redirects are not followed: a 3xx is the platform's answer, read by its rules
        # no cookie jar: platforms' cookies are not state a server-to-server sender keeps
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector,
                                              cookie_jar=aiohttp.DummyCookieJar())
        try:
            while not self._stopping:
                if not self.queue:
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                await self._linger()
                try:
                    await self._dispatch()
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug must not stop the destination: retry its jobs
                    log.exception("%s: dispatching failed; the jobs are retried", self.name)
                    await asyncio.sleep(1.0)
        finally:
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=dest.timeout_seconds + 1)
            await self._session.close()

    async def _linger(self) -> None:
        """A destination that batches waits briefly for a fuller request."""
        config = self.get_config()
        dest = config.destinations.get(self.name)
        if dest is None or dest.max_events <= 1:
            return
        linger = (dest.linger_ms if dest.linger_ms is not None else config.settings.linger_ms)
        if linger <= 0 or len(self.queue) >= dest.max_events:
            return
        deadline = time.monotonic() + linger / 1000
        while len(self.queue) < dest.max_events and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def stop(self) -> list[int]:
        """Stop taking jobs; let requests in flight finish. Returns the seqs of jobs
        never sent, for the plane to hand back."""
        self._stopping = True
        self._arrived.set()
        unsent = [job.seq for job in self.queue]
        self.queue.clear()
        return unsent

    # --- one round --------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        config = self.get_config()
        dest = config.destinations.get(self.name)
        jobs = list(self.queue)
        self.queue.clear()
        if dest is None:  # removed by a reload: hand the jobs back undecided
            await self.writer.submit([_outcome(job, self.name, "queued", due_at=time.time())
                                      for job in jobs], None, self)
            return
        slicer = Slicer(self.governor)
        outcomes: list[Outcome] = []
        by_connection: dict[tuple[str, str], list[Job]] = defaultdict(list)
        for job in jobs:
            if job.due.drop_reason:  # decided while held: its hold ended without a partner
                outcomes.append(_outcome(job, self.name, "dropped", job.due.drop_reason,
                                         cause="send_if"))
                continue
            row = job.due.event.row
            by_connection[(row.account, row.environment)].append(job)
        policy = RetryPolicy(config, dest)
        for (account, environment), group in by_connection.items():
            acc = config.accounts.get(account)
            env = acc.environments.get(environment) if acc else None
            conn = env.destinations.get(self.name) if env else None
            if conn is None or not conn.enabled:
                outcomes += [_outcome(job, self.name, "dropped", "destination no longer enabled "
                                      "for this account", cause="disabled") for job in group]
                continue
            if self.pauses.paused(self.name, account, environment):
                outcomes += [_outcome(job, self.name, "queued", "paused: credentials rejected")
                             for job in group]
                continue
            ready: list[Rendered] = []
            by_seq: dict[int, Job] = {}
            now = time.time()
            for job in group:
                stale = too_old(dest, job.body.get("occurred_at"), now)
                if stale:  # before batching: one stale event must not fail a whole request
                    outcomes.append(_outcome(job, self.name, "dropped", stale, cause="too_old"))
                    continue
                try:
                    job.rendered = render_payload(dest, conn, job.seq, job.body,
                                                  job.due.event.row.pii)
                    ready.append(job.rendered)
                    by_seq[job.seq] = job
                except RenderError as exc:
                    outcomes.append(_outcome(job, self.name, "dropped", str(exc),
                                             cause="invalid"))
                except Exception as exc:  # anything else in one payload fails it alone
                    log.exception("%s: rendering event %s failed", self.name, job.seq)
                    outcomes.append(_outcome(job, self.name, "dropped",
                                             f"rendering failed: {type(exc).__name__}: {exc}",
                                             cause="invalid"))
                await slicer.tick()
            for batch in batches(dest, ready):
                await self._start_send(config, dest, conn, account, environment,
                                       [by_seq[r.seq] for r in batch], policy)
        if outcomes:
            await self.writer.submit(outcomes, None, self)

    async def _start_send(self, config: CompiledConfig, dest: Destination,
                          conn: DestinationConnection, account: str, environment: str,
                          jobs: list[Job], policy: RetryPolicy) -> None:
        assert self._slots is not None
        await self._slots.acquire()  # at most `concurrency` requests in flight
        task = asyncio.create_task(self._send_batch(config, dest, conn, account, environment,
                                                    jobs, policy))
        self._inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            assert self._slots is not None
            self._slots.release()
            if not t.cancelled() and t.exception() is not None:
                log.error("%s: sending a batch failed", self.name, exc_info=t.exception())

        task.add_done_callback(done)

    async def _send_batch(self, config: CompiledConfig, dest: Destination,
                          conn: DestinationConnection, account: str, environment: str,
                          jobs: list[Job], policy: RetryPolicy, depth: int = 0) -> None:
        assert self._session is not None
        try:
            token = await self.tokens.get(self._session, dest, conn, account, environment)
        except PermissionError as exc:  # the token endpoint refused the credentials
            await self._pause(account, environment, jobs, f"auth: {exc}")
            return
        except (aiohttp.ClientError, TimeoutError) as exc:  # unreachable: try again later
            verdict = Verdict(RETRY, f"token endpoint unreachable: {type(exc).__name__}: {exc}")
            await self.writer.submit([self._after(job, i, verdict, policy, None)
                                      for i, job in enumerate(jobs)], None, self)
            return
        rendered = [job.rendered for job in jobs if job.rendered is not None]
        try:
            request = build_request(dest, conn, rendered, [j.body for j in jobs],
                                    access_token=token)
        except Exception as exc:  # e.g. a template that fails on one event's values
            await self._split_or_fail(config, dest, conn, account, environment, jobs, policy,
                                      depth, f"building the request failed: "
                                      f"{type(exc).__name__}: {exc}")
            return
        refused = await outbound.url_refusal(config.settings.outbound, request.url)
        if refused is not None:  # the operator's outbound policy: never sent, never retried
            excerpt = RequestExcerpt(self.name, _now_iso(), request.excerpt(
                secrets_of(connection_settings(dest, conn), token)), None)
            await self.writer.submit([_outcome(job, self.name, "dropped",
                                               f"outbound refused: {refused}", attempted=True,
                                               request_ref=0) for job in jobs], excerpt, self)
            return
        if dest.rate_per_second:
            pacer = self._pacers.setdefault((account, environment), Pacer(dest.rate_per_second))
            await pacer.wait()
        answer = await self._send(config, dest, request)
        if answer.status == 0 and answer.error and answer.error.startswith("invalid request"):
            # the HTTP client refused to send it (a control character in a header...)
            await self._split_or_fail(config, dest, conn, account, environment, jobs, policy,
                                      depth, answer.error)
            return
        self.stats.requests += 1
        self.stats.events_sent += len(jobs)
        self.stats.batch_sizes.append(len(jobs))
        if len(self.stats.batch_sizes) > 1000:
            del self.stats.batch_sizes[:500]
        verdict = classify(dest, answer, len(jobs), [r.payload for r in rendered])
        secrets = secrets_of(connection_settings(dest, conn), token)
        excerpt = RequestExcerpt(self.name, _now_iso(), request.excerpt(secrets), {
            "status": answer.status, "body": answer.body[:2048].decode("utf-8", "replace"),
            "error": answer.error, "elapsed_ms": round(answer.elapsed_ms, 1)})
        if verdict.kind == AUTH:
            self.tokens.forget(dest.name, account, environment)
            await self._pause(account, environment, jobs, verdict.message, excerpt,
                              answer.elapsed_ms)
            return
        if verdict.kind == PERMANENT and len(jobs) > 1 and depth < MAX_SPLIT_DEPTH:
            # isolate the bad event(s): each half is sent on its own
            half = len(jobs) // 2
            await asyncio.gather(
                self._send_batch(config, dest, conn, account, environment, jobs[:half],
                                 policy, depth + 1),
                self._send_batch(config, dest, conn, account, environment, jobs[half:],
                                 policy, depth + 1))
            return
        await self.writer.submit([self._after(job, index, verdict, policy, answer.elapsed_ms)
                                  for index, job in enumerate(jobs)], excerpt, self)

    async def _split_or_fail(self, config: CompiledConfig, dest: Destination,
                             conn: DestinationConnection, account: str, environment: str,
                             jobs: list[Job], policy: RetryPolicy, depth: int,
                             reason: str) -> None:
        if len(jobs) > 1 and depth < MAX_SPLIT_DEPTH:
            half = len(jobs) // 2
            await asyncio.gather(
                self._send_batch(config, dest, conn, account, environment, jobs[:half], policy,
                                 depth + 1),
                self._send_batch(config, dest, conn, account, environment, jobs[half:], policy,
                                 depth + 1))
            return
        log.warning("%s: event %s cannot be sent: %s", self.name,
                    jobs[0].due.event.row.event_id if jobs else "?", reason)
        await self.writer.submit([_outcome(job, self.name, "dropped", reason, cause="invalid")
                                  for job in jobs], None, self)

    async def _send(self, config: CompiledConfig, dest: Destination,
                    request: OutgoingRequest) -> Answer:
        assert self._session is not None
        started = time.perf_counter()
        try:
            # no redirects under an outbound policy: one to an IP literal would bypass it
            return await transport.send(self._session, request, dest.redirect_hosts,
                                        follow=not config.settings.outbound.active)
        except (ValueError, aiohttp.InvalidURL) as exc:  # the client refused to send it
            return Answer(0, {}, b"", f"invalid request: {type(exc).__name__}: {exc}",
                          (time.perf_counter() - started) * 1000)

    # --- outcomes --------------------------------------------------------------------------

    async def _pause(self, account: str, environment: str, jobs: list[Job], reason: str,
                     excerpt: RequestExcerpt | None = None,
                     elapsed_ms: float | None = None) -> None:
        """Bad credentials: the connection waits for `router resume`; the attempt is in
        the history, and a resume starts a new round of the retry policy."""
        if not self.pauses.paused(self.name, account, environment):
            log.warning("%s: pausing %s/%s: %s", self.name, account, environment, reason,
                        extra={"fields": {"event": "connection.paused", "destination": self.name,
                                          "account": account, "environment": environment,
                                          "error": reason}})
            self.pauses.by_destination[self.name].add((account, environment))
            await self._pause_store(self.name, account, environment, reason)
        await self.writer.submit([_outcome(job, self.name, "queued", f"paused: {reason}",
                                           attempted=excerpt is not None,
                                           request_ref=0 if excerpt else None,
                                           attempt_ms=elapsed_ms) for job in jobs],
                                 excerpt, self)

    def _after(self, job: Job, index: int, verdict: Verdict, policy: RetryPolicy,
               elapsed_ms: float | None) -> Outcome:
        now = time.time()
        ref = 0 if elapsed_ms is not None else None
        if verdict.kind == OK and index not in verdict.event_errors:
            received = parse_time(job.due.event.row.received_at)
            latency = (now - received.timestamp()) * 1000 if received else None
            return _outcome(job, self.name, "delivered", None, attempted=True, request_ref=ref,
                            attempt_ms=elapsed_ms,
                            latency_ms=round(latency, 1) if latency is not None else None)
        if verdict.kind == OK:  # this event was rejected inside a successful request
            return _outcome(job, self.name, "dropped", verdict.event_errors[index],
                            attempted=True, request_ref=ref, attempt_ms=elapsed_ms,
                            cause="event_error")
        if verdict.kind == PERMANENT:
            return _outcome(job, self.name, "dropped", verdict.message, attempted=True,
                            request_ref=ref, attempt_ms=elapsed_ms, cause="permanent")
        assert verdict.kind == RETRY
        attempts = job.due.round_attempts + 1
        if attempts >= policy.max_attempts:
            return _outcome(job, self.name, "dropped", f"gave up after {attempts} attempts: "
                            f"{verdict.message}", attempted=True, request_ref=ref,
                            attempt_ms=elapsed_ms, cause="retries_exhausted")
        due = now + policy.delay(attempts, verdict.retry_after)
        return _outcome(job, self.name, "failed", verdict.message, attempted=True,
                        request_ref=ref, attempt_ms=elapsed_ms, due_at=due,
                        next_retry_at=_now_iso(due))


def _outcome(job: Job, destination: str, status: str, error: str | None = None, *,
             attempted: bool = False, request_ref: int | None = None,
             attempt_ms: float | None = None, latency_ms: float | None = None,
             due_at: float | None = None, next_retry_at: str | None = None,
             cause: str | None = None) -> Outcome:
    return Outcome(job.seq, destination, status, attempted, error=error, due_at=due_at,
                   next_retry_at=next_retry_at, latency_ms=latency_ms,
                   request_ref=request_ref if attempted else None,
                   attempt_ms=round(attempt_ms, 1) if attempt_ms is not None else None,
                   cause=cause, attempt=job.due.attempts + 1 if attempted else 0,
                   event=job.due.event)


def plaintext_destinations(config: CompiledConfig) -> frozenset[str]:
    return frozenset(n for n, d in config.destinations.items() if d.plaintext_pii)

