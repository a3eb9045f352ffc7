"""Delivery-plane safety rules: redirects, Retry-After, stale events, keyed event errors.

Redirect tests run real aiohttp servers on loopback: one plays the platform answering
307, the other the origin it points at, and we look at what actually arrived there.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.config.model import CompiledConfig
from router.delivery import transport
from router.delivery.age import too_old
from router.delivery.classify import OK, RETRY, Answer, classify, retry_after_seconds
from router.delivery.render import OutgoingRequest
from router.delivery.retry import RetryPolicy, capped_retry_after, retry_window
from router.expr.jmes import compile_expr

# --- redirects ---------------------------------------------------------------------------


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def _redirect_scenario(location_for: Any, allowed: tuple[str, ...] = ()) -> tuple[
        Answer, list[dict[str, Any]], list[dict[str, Any]]]:
    platform_seen: list[dict[str, Any]] = []
    other_seen: list[dict[str, Any]] = []

    async def other(request: web.Request) -> web.Response:
        other_seen.append({"path": request.path, "headers": dict(request.headers),
                           "body": await request.read()})
        return web.json_response({"ok": True})

    other_runner, other_url = await _serve(_app(other))

    async def platform(request: web.Request) -> web.Response:
        platform_seen.append({"path": request.path, "body": await request.read(),
                              "headers": dict(request.headers)})
        if request.path == "/moved":
            return web.json_response({"ok": True, "moved": True})
        return web.Response(status=307, headers={"Location": location_for(other_url)})

    platform_runner, platform_url = await _serve(_app(platform))
    try:
        async with aiohttp.ClientSession() as session:
            request = OutgoingRequest("POST", platform_url + "/events", {
                "Access-Token": "secret-token-123", "Content-Type": "application/json"},
                b'{"email":"hash"}', (1,))
            answer = await transport.send(session, request, allowed)
    finally:
        await platform_runner.cleanup()
        await other_runner.cleanup()
    return answer, platform_seen, other_seen


def _app(handler: Any) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def test_a_307_to_another_origin_never_receives_the_body_or_credentials() -> None:
    answer, platform, other = asyncio.run(_redirect_scenario(lambda url: url + "/steal"))
    assert other == []  # nothing at all reached the other origin
    assert answer.status == 307
    assert "not followed" in (answer.error or "")
    assert len(platform) == 1


def test_a_307_within_the_same_origin_is_followed_with_method_and_body() -> None:
    answer, platform, other = asyncio.run(_redirect_scenario(lambda url: "/moved"))
    assert answer.status == 200 and orjson.loads(answer.body)["moved"] is True
    assert [p["path"] for p in platform] == ["/events", "/moved"]
    assert platform[1]["body"] == b'{"email":"hash"}'
    assert other == []


def test_an_allowlisted_host_is_followed_only_over_https() -> None:
    # plain http to an allowlisted host is a downgrade: refused
    answer, _, other = asyncio.run(_redirect_scenario(lambda url: url + "/x", ("127.0.0.1",)))
    assert answer.status == 307 and other == []
    origin = "https://widget.criteo.com/m/event"
    assert transport.redirect_target(origin, 307, "https://eu.widget.criteo.com/m/event",
                                     ["*.criteo.com"]) == "https://eu.widget.criteo.com/m/event"
    assert transport.redirect_target(origin, 307, "https://criteo.com.evil.test/",
                                     ["*.criteo.com"]) is None
    assert transport.redirect_target(origin, 302, "/m/event2", ["*.criteo.com"]) is None
    assert transport.redirect_target(origin, 308, "/m/event2") == "https://widget.criteo.com/m/event2"


def test_a_redirect_that_is_not_followed_is_classified_with_its_target(
        shipped_config: CompiledConfig) -> None:
    dest = shipped_config.destinations["tiktok"]
    answer = Answer(307, {"Location": "https://elsewhere.test/"}, b"",
                    "redirect to 'https://elsewhere.test/' not followed")
    verdict = classify(dest, answer, 1)
    assert verdict.kind != OK and "elsewhere.test" in verdict.message


# --- Retry-After -------------------------------------------------------------------------


def test_retry_after_is_capped_at_the_retry_window(shipped_config: CompiledConfig) -> None:
    policy = RetryPolicy(shipped_config, shipped_config.destinations["meta"])
    policy.base, policy.factor, policy.max_attempts = 300.0, 6.0, 5
    assert policy.window == retry_window(300, 6, 5) == 300 + 1800 + 10800 + 64800
    huge = retry_after_seconds({"Retry-After": "999999999"})
    assert huge == 999999999
    assert policy.delay(1, huge) <= policy.window
    assert policy.delay(1, 5000) >= 5000  # a reasonable Retry-After is still honoured
    assert capped_retry_after(float("nan"), 10) == 0.0
    assert capped_retry_after(-3, 10) == 0.0


# --- maximum event age -------------------------------------------------------------------


def test_events_older_than_the_platform_accepts_are_named_too_old(
        shipped_config: CompiledConfig) -> None:
    meta = shipped_config.destinations["meta"]
    assert meta.max_event_age_seconds == 7 * 86400
    now = 1_800_000_000.0
    assert too_old(meta, now - 6 * 86400, now) is None
    reason = too_old(meta, now - 8 * 86400, now)
    assert reason is not None and "8d" in reason and "7d" in reason
    assert too_old(replace(meta, max_event_age_seconds=None), now - 1e8, now) is None


# --- per-event errors named by key -------------------------------------------------------


def test_event_errors_named_by_key_fail_only_the_events_with_that_key(
        shipped_config: CompiledConfig) -> None:
    awin = shipped_config.destinations["awin"]
    payloads = [{"orderReference": f"o-{i}"} for i in range(4)]
    body = {"successfulOrders": payloads[:1] + payloads[2:3],
            "failedOrders": [{"order": payloads[1], "errors": [{"message": "bad amount"}]},
                             {"order": payloads[3], "errors": [{"message": "bad awc"}]}]}
    verdict = classify(awin, Answer(206, {}, orjson.dumps(body)), 4, payloads)
    assert verdict.kind == OK
    assert verdict.event_errors == {1: "bad amount", 3: "bad awc"}
    # without the payloads, keys cannot be matched: nothing is blamed on the wrong event
    assert classify(awin, Answer(206, {}, orjson.dumps(body)), 4).event_errors == {}


def test_unknown_keys_and_bad_items_are_ignored(shipped_config: CompiledConfig) -> None:
    awin = replace(shipped_config.destinations["awin"], response=replace(
        shipped_config.destinations["awin"].response,
        event_errors=compile_expr("body.errs")))
    body = {"errs": [{"key": "nope", "message": "x"}, "junk", {"index": True}, {"index": 0}]}
    verdict = classify(awin, Answer(200, {}, orjson.dumps(body)), 1, [{"orderReference": "a"}])
    assert verdict.event_errors == {0: "rejected by platform"}


def test_a_transient_failure_still_retries(shipped_config: CompiledConfig) -> None:
    verdict = classify(shipped_config.destinations["awin"], Answer(503, {}, b"{}"), 2)
    assert verdict.kind == RETRY


@pytest.mark.parametrize("value", ["7d", "72h", "30m", "90s", 3600])
def test_max_event_age_accepts_durations(value: Any) -> None:
    from router.config.compile import _duration

    assert _duration(value) in (7 * 86400, 72 * 3600, 1800, 90, 3600)
