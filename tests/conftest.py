"""Fixtures shared by every test: an isolated RPM_HOME and no leaking of the developer's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

_LEAKY_ENV_PREFIXES = ("RPM_", "RUNPOD_", "XDG_")
_E2E = Path(__file__).resolve().parent / "e2e"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own RPM_HOME and no RPM_/RUNPOD_ variables from the outside."""
    import os

    for name in list(os.environ):
        if name.startswith(_LEAKY_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "rpm-home"
    home.mkdir()
    monkeypatch.setenv("RPM_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tiers, by place, so a new file cannot drift out of them: everything under tests/e2e/ is `e2e` and
    `slow` (real subprocesses), as is `mypy --strict`; `pytest -m "not slow"` is the inner loop's fast tier."""
    from tests.support import early

    for item in items:
        if item.path.is_relative_to(_E2E):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)
        elif item.nodeid == early.MYPY_TEST:
            item.add_marker(pytest.mark.slow)
    early.schedule_first(config, items)


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.support import early

    early.compile_package(session.config)


def pytest_collection_finish(session: pytest.Session) -> None:
    from tests.support import early

    early.start(session)


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests.support import early

    early.stop(config)
