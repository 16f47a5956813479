"""The proxy's event loop: uvloop's when it is importable (the optional `fast` extra), asyncio's otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest

from runpod_manager.proxy.server import loop_factory


def test_without_uvloop_the_proxy_runs_on_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert loop_factory() is None


def test_uvloop_can_be_turned_off() -> None:
    assert loop_factory(use_uvloop=False) is None


def test_with_uvloop_installed_the_proxy_runs_on_it() -> None:
    uvloop = pytest.importorskip("uvloop", reason="the optional `fast` extra is not installed")
    factory = loop_factory()
    assert factory is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
