"""Shared fixtures: the shipped config compiled once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from router.config.compile import load_config
from router.config.model import CompiledConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shipped_config() -> CompiledConfig:
    cwd = os.getcwd()
    os.chdir(REPO)  # file names in messages are relative to the checkout
    try:
        return load_config(str(REPO))
    finally:
        os.chdir(cwd)
