"""Fixtures shared by every test: an isolated RPM_HOME and no leaking of the developer's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

_LEAKY_ENV_PREFIXES = ("RPM_", "RUNPOD_", "XDG_")


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


def pytest_collection_finish(session: pytest.Session) -> None:
    from tests.support import early

    early.compile_package()
    early.start(session)


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests.support import early

    early.stop(config)
