"""The sandbox imitates every shipped destination and tells overlapping paths apart."""

from __future__ import annotations

import re

from router.config.model import CompiledConfig
from router.delivery.sandbox import Sandbox


def sample_path(pattern: str) -> str:
    return re.sub(r"\{(\w+)(?::[^{}]+)?\}", lambda m: f"{m.group(1)}-1", pattern)


def test_every_destination_has_a_sandbox(shipped_config: CompiledConfig) -> None:
    sandbox = Sandbox(shipped_config)
    assert {i.destination for i in sandbox.imitations} == set(shipped_config.destinations)


def test_each_route_resolves_to_its_own_destination(shipped_config: CompiledConfig) -> None:
    sandbox = Sandbox(shipped_config)
    for name, dest in shipped_config.destinations.items():
        for route in dest.sandbox["routes"]:
            path = sample_path(route["path"])
            found = sandbox.match(route.get("method", "POST"), path)
            assert found is not None and found.destination == name, (name, path, found)
