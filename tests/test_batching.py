"""Payloads are grouped into requests by batch key, within the destination's event and
byte limits, in arrival order."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from router.delivery.render import Rendered, batches


def _rendered(n: int, key: str, size: int) -> Rendered:
    return Rendered(seq=n, event_id=f"e{n}", platform_event="Purchase", payload={}, size=size,
                    key=key)


def test_a_batch_closes_at_the_event_limit_and_at_the_byte_limit() -> None:
    dest: Any = SimpleNamespace(max_events=3, max_bytes=100)
    items = [_rendered(n, "", 30) for n in range(7)]
    assert [[r.seq for r in b] for b in batches(dest, items)] == [[0, 1, 2], [3, 4, 5], [6]]
    dest = SimpleNamespace(max_events=10, max_bytes=100)
    items = [_rendered(n, "", size) for n, size in enumerate([60, 40, 1, 100, 120, 5])]
    # 60+40 fits exactly; 1 more does not; an item bigger than the limit travels alone
    assert [[r.seq for r in b] for b in batches(dest, items)] == [[0, 1], [2], [3], [4], [5]]


def test_batch_keys_never_share_a_request() -> None:
    dest: Any = SimpleNamespace(max_events=2, max_bytes=1000)
    items = [_rendered(n, key, 10) for n, key in enumerate("abab a")]
    grouped = [[(r.key, r.seq) for r in b] for b in batches(dest, items)]
    assert grouped == [[("a", 0), ("a", 2)], [("a", 5)], [("b", 1), ("b", 3)], [(" ", 4)]]


@given(st.lists(st.tuples(st.sampled_from("xyz"), st.integers(1, 60)), max_size=60),
       st.integers(1, 5), st.integers(1, 120))
def test_every_payload_is_sent_once_within_the_limits(spec: list[tuple[str, int]],
                                                      max_events: int, max_bytes: int) -> None:
    dest: Any = SimpleNamespace(max_events=max_events, max_bytes=max_bytes)
    items = [_rendered(n, key, size) for n, (key, size) in enumerate(spec)]
    grouped = batches(dest, items)
    assert sorted(r.seq for b in grouped for r in b) == list(range(len(items)))
    for batch in grouped:
        assert batch and len({r.key for r in batch}) == 1 and len(batch) <= max_events
        assert len(batch) == 1 or sum(r.size for r in batch) <= max_bytes
        assert [r.seq for r in batch] == sorted(r.seq for r in batch)
