"""`rpm keys` through Typer's CliRunner: the secret shown once (data.secret with --json), never again;
bad input exits 2 with one line naming what is wrong; the store holds only hashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from runpod_manager.cli import app

CONFIG = """\
version = 1

[pods.chat]
model = "org/chat-7b"

[pods.coder]
model = "org/coder-1.5b"
aliases = ["autocomplete"]
"""


def rpm(home: Path, *args: str) -> Result:
    config = home / "pod_config.toml"
    if not config.exists():
        config.write_text(CONFIG)
    return CliRunner().invoke(app, list(args), env={"RPM_HOME": str(home), "RPM_CONFIG": str(config),
                                                    "COLUMNS": "200"}, catch_exceptions=False)


def envelope(result: Result) -> dict[str, Any]:
    document = json.loads(result.stdout)
    assert document["rpm"] == 1
    return dict(document)


def test_create_shows_the_secret_once_and_list_usage_revoke_never_do(isolated_home: Path) -> None:
    created = envelope(rpm(isolated_home, "keys", "create", "dev", "--pods", "coder", "--rpm", "60", "--json"))
    assert created["ok"] and created["command"] == "keys create"
    secret = created["data"]["secret"]
    assert secret.startswith("rpm_")
    assert created["data"]["key"]["pods"] == ["coder"]
    assert created["data"]["key"]["limits"]["requests_per_minute"] == 60
    human = rpm(isolated_home, "keys", "create", "script", "--daily-budget-usd", "2", "--expires", "30d",
                "--models", "autocomplete")
    assert human.exit_code == 0
    human_secret = human.stdout.strip().splitlines()[-1]
    assert human_secret.startswith("rpm_") and "shown once" in human.stdout
    admin = envelope(rpm(isolated_home, "keys", "create", "boss", "--role", "admin", "--json"))
    assert admin["data"]["key"]["role"] == "admin"

    outputs = [rpm(isolated_home, "keys", "list"), rpm(isolated_home, "keys", "list", "--json"),
               rpm(isolated_home, "keys", "usage"), rpm(isolated_home, "keys", "usage", "dev", "--json"),
               rpm(isolated_home, "keys", "revoke", "dev"), rpm(isolated_home, "keys", "list", "--json")]
    assert all(result.exit_code == 0 for result in outputs), [result.output for result in outputs]
    listed = json.loads(outputs[-1].stdout)["data"]["keys"]
    assert {key["name"]: key["status"] for key in listed} == {"dev": "revoked", "script": "active", "boss": "active"}
    assert "dev" in outputs[0].stdout and "60 rpm" in outputs[0].stdout and "$2.00/day" in outputs[0].stdout
    usage = json.loads(outputs[3].stdout)["data"]
    assert [key["name"] for key in usage["keys"]] == ["dev"] and usage["keys"][0]["requests"] == 0
    every_file = b"".join(path.read_bytes() for path in isolated_home.rglob("*") if path.is_file())
    for token in (secret, human_secret, admin["data"]["secret"]):
        assert all(token not in result.output for result in outputs)
        assert token.encode() not in every_file


def test_bad_input_exits_2_with_one_line(isolated_home: Path) -> None:
    assert rpm(isolated_home, "keys", "create", "dev").exit_code == 0
    cases = {
        ("keys", "create", "dev"): "a key named 'dev' exists already",
        ("keys", "create", "x", "--pods", "chat,nope"): "unknown pods nope in --pods: the config's pods are chat, "
                                                         "coder",
        ("keys", "create", "x", "--models", "gpt-4"): "the config's models are org/chat-7b, org/coder-1.5b, "
                                                      "autocomplete",
        ("keys", "create", "x", "--expires", "tomorrow"): "invalid --expires 'tomorrow'",
        ("keys", "create", "x", "--expires", "2001-01-01"): "that is in the past",
        ("keys", "create", "Bad Name"): "invalid key name 'Bad Name'",
        ("keys", "create", "x", "--role", "root"): "invalid --role 'root'",
        ("keys", "revoke", "nobody"): "no key named 'nobody'; the keys are dev",
        ("keys", "usage", "nobody"): "no key named 'nobody'",
    }
    for args, message in cases.items():
        result = rpm(isolated_home, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.output
        as_json = rpm(isolated_home, *args, "--json")
        assert as_json.exit_code == 2 and envelope(as_json)["error"]["exit_code"] == 2
    assert rpm(isolated_home, "keys", "create", "x", "--rpm", "0").exit_code == 2  # Typer's own range check
    [only] = json.loads(rpm(isolated_home, "keys", "list", "--json").stdout)["data"]["keys"]
    assert only["name"] == "dev"  # nothing was written by a refused create
