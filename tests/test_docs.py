"""Generated files cannot drift: docs/commands.md from `rpm --help`, pod_config.toml from `rpm init`.

Regenerate with: UPDATE_RPM_DOCS=1 python -m pytest tests/test_docs.py
"""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from runpod_manager.cli import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
COMMANDS = ["init", "start", "status", "shutdown", "refresh-catalog", "watchdog", "proxy", "sandbox", "demo",
            "report", "simulate"]
SUBCOMMANDS = ["keys", "keys create", "keys list", "keys revoke", "keys usage"]


def render_reference() -> str:
    runner = CliRunner()
    env = {"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}
    parts = ["# rpm command reference", "",
             "Generated from `rpm --help` by `UPDATE_RPM_DOCS=1 python -m pytest tests/test_docs.py`; "
             "a test fails when it is stale.", ""]
    for args in ([], *([c] for c in COMMANDS), *(c.split() for c in SUBCOMMANDS)):
        result = runner.invoke(app, [*args, "--help"], env=env, prog_name="rpm")
        assert result.exit_code == 0, result.output
        title = "rpm " + " ".join(args) if args else "rpm"
        parts += [f"## `{title.strip()}`", "", "```", result.output.rstrip(), "```", ""]
    return "\n".join(parts)


def test_command_reference_is_current() -> None:
    expected = render_reference()
    if os.environ.get("UPDATE_RPM_DOCS") == "1":
        DOC.write_text(expected, encoding="utf-8")
    assert DOC.is_file() and DOC.read_text(encoding="utf-8") == expected, (
        "docs/commands.md is stale: run UPDATE_RPM_DOCS=1 python -m pytest tests/test_docs.py")


def test_every_command_is_documented() -> None:
    names = {command.name or command.callback.__name__ for command in app.registered_commands if command.callback}
    assert names == set(COMMANDS), "add new commands to COMMANDS so the reference covers them"


EXAMPLE = Path(__file__).resolve().parents[1] / "pod_config.toml"


def test_the_shipped_example_config_is_the_init_template() -> None:
    """pod_config.toml says 'the values shown are the defaults': it is `rpm init`'s output, regenerated."""
    from runpod_manager.config import render_template

    expected = render_template()
    if os.environ.get("UPDATE_RPM_DOCS") == "1":
        EXAMPLE.write_text(expected, encoding="utf-8")
    assert EXAMPLE.read_text(encoding="utf-8") == expected, (
        "pod_config.toml is stale: run UPDATE_RPM_DOCS=1 python -m pytest tests/test_docs.py")


README = Path(__file__).resolve().parents[1] / "README.md"


def _section(text: str, title: str) -> str:
    """From `title` to the next heading of level 2 or 3 (a `# comment` inside a code block is not one)."""
    import re

    start = text.index(title)
    following = re.compile(r"^#{2,3} ", re.MULTILINE).search(text, start + len(title))
    return text[start:following.start() if following else None]


def test_the_readme_runs_the_emulator_in_its_own_rpm_home() -> None:
    """Pasting the sandbox's exports into a shell that uses the real RPM_HOME would mix the emulator's pods
    into the real pod_state.json: the section sets its own RPM_HOME before the first rpm command."""
    section = _section(README.read_text(encoding="utf-8"), "### Trying it against the emulator by hand")
    assert 'export RPM_HOME="$(mktemp -d)"' in section
    assert section.index("export RPM_HOME") < section.index("rpm init")
    assert "Authorization: Bearer $RUNPOD_API_KEY" in section  # the control endpoints need the key


def test_ci_writes_its_chromium_log_to_a_per_run_temp_file() -> None:
    script = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert "mktemp" in script and "/tmp/rpm-ci-chromium.log" not in script


def test_the_readmes_simulation_is_what_the_command_prints() -> None:
    """The README's `rpm simulate` example is the command's output (deterministic for its seed), row for row."""
    section = _section(README.read_text(encoding="utf-8"), "## Choosing a setting: `rpm simulate`")
    result = CliRunner().invoke(app, ["simulate", "--profile", "solo", "--idle-timeouts", "120,300,1800",
                                      "--recommend", "--max-p95-wait", "90"],
                                env={"COLUMNS": "110", "TERM": "dumb", "NO_COLOR": "1", "RPM_LIMITS_TIMEZONE": "UTC"})
    assert result.exit_code == 0, result.output
    rows = [line.rstrip() for line in result.stdout.splitlines() if line.startswith(" ") and "│" in line]
    assert len(rows) == 10
    for row in rows:
        assert row in section, row
    assert "set [limits] idle_timeout_seconds = 120" in result.stdout.replace("\n", " ")


def test_ci_runs_exactly_the_readmes_test_command_and_the_suite_runs_in_parallel() -> None:
    """One test command: the README's is the one `.ci/run` runs, and the parallelism it relies on lives in
    pytest's config (pytest-xdist from the test extra), so neither spells it again."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    readme = README.read_text(encoding="utf-8")
    block = readme[readme.index("Run the test suite"):]
    start = block.index("```sh\n") + len("```sh\n")
    command = block[start:block.index("\n```", start)]
    assert command.endswith("python -m pytest"), command
    assert command in (root / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(dep.startswith("pytest-xdist") for dep in project["project"]["optional-dependencies"]["test"])
    assert "-n " in project["tool"]["pytest"]["ini_options"]["addopts"]
