"""`rpm simulate`: small traces whose cost and waits are worked out by hand, the real planner behind every
decision, the built-in profiles, traces from files and the log, and the recommendation.

The hand-worked cases share one model: $3.60/h (a tenth of a cent a second), boots that always take their
median (resume 30 s, create 100 s), no refused resumes, no storage; one UTC day from T; the proxy's passes
every 5 s from T; idle 300 s; no cutoff, runtime or cap unless a test sets them.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from runpod_manager import policy
from runpod_manager.cli import app
from runpod_manager.config import Config, LimitsConfig, ProxyConfig
from runpod_manager.errors import UsageError
from runpod_manager.paths import resolve_paths
from runpod_manager.policy import Action, ActionKind, Limit
from runpod_manager.requestlog import RequestLog
from runpod_manager.simulate import (
    BootTime,
    PolicyResult,
    RunPodModel,
    Trace,
    _World,  # the replay's engine: the actions it applies are checked against the plan
    oracle,
    profile_trace,
    recommend,
    replay,
    simulate,
    trace_from_file,
    trace_from_log,
    with_idle,
)
from runpod_manager.state import Lease

T = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
DAY = 86400.0
MODEL = RunPodModel(rate_usd_per_hour=3.6, resume_boot=BootTime(30, 30), fresh_boot=BootTime(100, 100),
                    refused_resume_rate=0.0)
CONFIG = Config(limits=LimitsConfig(timezone="UTC", daily_cutoff="", runtime_seconds=366 * 86400,
                                    idle_timeout_seconds=300, idle_action="stop", max_daily_spend_usd=0),
                proxy=ProxyConfig(reconcile_interval_seconds=5.0))


def trace(*requests: tuple[float, float]) -> Trace:
    """Requests as (seconds after T, duration) in a one-day window."""
    return Trace("test", "hand-made", [T + at for at, _ in requests], [d for _, d in requests], T, T + DAY)


def run(requests: Trace, config: Config = CONFIG, model: RunPodModel = MODEL, *, interval: float = 5.0) -> Any:
    return replay(requests, config, model, name="rpm", description="", pass_interval=interval)


def limits(**changes: Any) -> Config:
    return dataclasses.replace(CONFIG, limits=dataclasses.replace(CONFIG.limits, **changes))


# ------------------------------------------------------------------------------------- hand-worked cases


def test_one_request_creates_the_pod_waits_for_it_and_idles_out() -> None:
    # Arrives at 1000: create, ready at 1100 (it waited 100 s), served until 1102; idle ends at 1402, the next
    # pass is at 1405: billed 1000-1405 = 405 s = $0.405.
    result = run(trace((1000, 2)))
    assert result.waits == [100.0]
    assert result.gpu_seconds == 405
    assert result.cost_usd == pytest.approx(0.405)
    assert (result.waited_requests, result.failed_requests, result.planner_calls) == (1, 0, 2)


def test_two_requests_inside_the_idle_window_share_one_start() -> None:
    # The second (1300) comes before the idle end (1402): billed until the pass after 1302 + 300 = 1602.
    result = run(trace((1000, 2), (1300, 2)))
    assert result.waits == [100.0]
    assert result.gpu_seconds == 605


def test_two_requests_outside_the_idle_window_stop_and_resume() -> None:
    # Stopped at 1405; the second (2000) resumes it (30 s), served until 2032, stopped at 2335: 405 + 335 s.
    result = run(trace((1000, 2), (2000, 2)))
    assert result.waits == [100.0, 30.0]
    assert result.gpu_seconds == 405 + 335
    assert result.cost_usd == pytest.approx(0.740)


def test_a_cron_watchdog_stops_at_its_own_five_minute_ticks() -> None:
    # The idle end is 1402; the first 300 s tick after it is 1500.
    assert run(trace((1000, 2)), interval=300).gpu_seconds == 500


def test_a_daily_cutoff_ends_the_session_and_the_next_request_starts_afresh() -> None:
    # A request a minute from 11:50:30 to 12:10:30. Created at 11:50:30 (ready 11:52:10), terminated by the
    # 12:00 cutoff (570 s); the 12:00:30 request creates a new pod (ready 12:02:10), idle from 12:10:31,
    # stopped at the pass at 12:15:35 (905 s).
    noon = 12 * 3600
    requests = trace(*[(noon - 570 + 60 * k, 1) for k in range(21)])
    result = run(requests, limits(daily_cutoff="12:00", cutoff_action="terminate"))
    assert result.waits == [100.0, 100.0]
    assert result.gpu_seconds == 570 + 905
    assert result.waited_requests == 4  # 11:50:30 and 11:51:30, then 12:00:30 and 12:01:30


def test_a_refused_resume_is_replaced_by_a_new_pod() -> None:
    refusing = dataclasses.replace(MODEL, refused_resume_rate=1.0)
    result = run(trace((1000, 2), (2000, 2)), limits(on_resume_failure="replace"), refusing)
    # The second wake's resume is refused; the planner replaces the pod: a 100 s create, billed 2000-2405.
    assert result.waits == [100.0, 100.0]
    assert result.gpu_seconds == 405 + 405


def test_a_refused_resume_fails_the_wake_when_on_resume_failure_is_fail() -> None:
    refusing = dataclasses.replace(MODEL, refused_resume_rate=1.0)
    result = run(trace((1000, 2), (2000, 2)), limits(on_resume_failure="fail"), refusing)
    assert result.waits == [100.0]
    assert result.failed_requests == 1
    assert result.gpu_seconds == 405


def test_stop_keeps_paying_for_storage_and_terminate_waits_for_a_fresh_start() -> None:
    storing = dataclasses.replace(MODEL, storage_gb=100, storage_usd_per_gb_month=0.20)  # $20 a 30-day month
    requests = trace((1000, 2), (50000, 2))
    stopped = run(requests, limits(idle_action="stop"), storing)
    terminated = run(requests, limits(idle_action="terminate"), storing)
    # stop: billed 405 + 335 s; stopped 1405-50000 and 50335-86400, 84,660 s of 100 GB.
    assert stopped.gpu_seconds == 405 + 335
    assert stopped.storage_usd == pytest.approx(20 * 84660 / (30 * DAY))
    assert stopped.cost_usd == pytest.approx(0.740 + 20 * 84660 / (30 * DAY))
    assert stopped.waits == [100.0, 30.0]
    # terminate: nothing kept, but the second start is a create: billed 405 + 405 s.
    assert terminated.storage_usd == 0
    assert terminated.cost_usd == pytest.approx(0.810)
    assert terminated.waits == [100.0, 100.0]


def test_the_spend_cap_ends_the_pod_and_refuses_wakes_for_the_rest_of_the_day() -> None:
    # $3.60/h and a $1 cap: the cap is reached 1000 s after the first start; later requests are refused.
    result = run(trace(*[(1000 + 60 * k, 1) for k in range(30)]), limits(max_daily_spend_usd=1.0))
    assert result.gpu_seconds == 1000
    assert result.failed_requests == 30 - 17  # requests from 2020 on: 1000 + 60 k >= 2000 for k >= 17


def test_always_on_bills_the_whole_window_and_the_oracle_only_sessions_and_a_boot_each() -> None:
    requests = trace((1000, 2), (1010, 5), (2000, 2))
    assert oracle(requests, MODEL).gpu_seconds == (1015 - 1000 + 30) + (2002 - 2000 + 30)
    assert oracle(requests, MODEL).sessions == 2
    simulation = simulate(requests, CONFIG, MODEL, idle_timeouts=(60,))
    assert simulation.policy("always-on").cost_usd == pytest.approx(3.6 * 24)
    assert [p.name for p in simulation.policies] == ["always-on", "cron-5min", "rpm", "idle-60s-stop",
                                                     "idle-60s-terminate", "oracle"]


# ----------------------------------------------------------------------------------------- the planner


def test_every_decision_is_the_real_planners(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[datetime, str | None]] = []
    real = policy.plan

    def spy(now: datetime, config: Config, record: Any, observed: Any, activity: Any, options: Any = None) -> Any:
        calls.append((now, observed.pod.status.value if observed.pod else None))
        return real(now, config, record, observed, activity, options)

    monkeypatch.setattr(policy, "plan", spy)
    result = run(trace((1000, 2), (2000, 2)))
    assert len(calls) == result.planner_calls == 4
    assert [(now.timestamp() - T, status) for now, status in calls] == [
        (1000, None), (1405, "RUNNING"), (2000, "EXITED"), (2335, "RUNNING")]


def test_a_planner_that_never_stops_keeps_the_pod_running(monkeypatch: pytest.MonkeyPatch) -> None:
    real = policy.plan

    def never_idle(now: datetime, config: Config, *rest: Any) -> Any:
        return real(now, with_idle(config, 0, "stop"), *rest)

    monkeypatch.setattr(policy, "plan", never_idle)
    result = run(trace((1000, 2)))
    assert result.gpu_seconds == DAY - 1000  # billed to the end of the window: the sim decided nothing itself


def test_the_simulator_applies_the_plans_actions_and_no_decision_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every action the replay applies is one the planner returned, in its order; how a lease's end treats the
    pod is the plan's (the CLOSE_LEASE's lease_end), for each limit."""
    planned: list[Action] = []
    applied: list[tuple[Action, str | None]] = []
    real_plan, real_apply = policy.plan, _World.apply

    def spy(*args: Any) -> Any:
        result = real_plan(*args)
        planned.extend(result.actions)
        return result

    def apply(world: _World, action: Action, now: float) -> str:
        outcome = real_apply(world, action, now)
        applied.append((action, world.record.lease_end_action))
        return outcome

    monkeypatch.setattr(policy, "plan", spy)
    monkeypatch.setattr(_World, "apply", apply)
    requests = trace((1000, 2), (5000, 2), (20000, 2), (30000, 2), (50000, 2))
    for config in (limits(idle_action="stop"), limits(idle_action="terminate"),
                   limits(idle_timeout_seconds=0, runtime_seconds=1800, cutoff_action="stop"),
                   limits(idle_timeout_seconds=0, daily_cutoff="03:00", cutoff_action="terminate"),
                   limits(idle_timeout_seconds=0, max_daily_spend_usd=2.0)):
        planned.clear()
        applied.clear()
        run(requests, config)
        assert [action for action, _ in applied] == planned
        closes = [(action, recorded) for action, recorded in applied if action.kind is ActionKind.CLOSE_LEASE]
        assert closes, config.limits
        for action, recorded in closes:
            assert action.lease_end is not None and recorded == action.lease_end.value


def test_the_simulator_records_the_lease_end_the_plan_carries_not_the_configs() -> None:
    world = _World(trace(), limits(idle_action="stop"), MODEL, pass_interval=5.0,
                   result=PolicyResult("rpm", ""))
    world.record.lease = Lease(opened_at=datetime.fromtimestamp(T, UTC),
                               deadline=datetime.fromtimestamp(T + DAY, UTC), opened_by="wake")
    world.apply(Action(ActionKind.CLOSE_LEASE, "idle", limit=Limit.IDLE, lease_end=ActionKind.TERMINATE), T + 900)
    assert world.record.lease is None and world.record.lease_end_action == "terminate"


# ------------------------------------------------------------------------------------------- profiles


@pytest.fixture(scope="module")
def solo() -> Any:
    config = dataclasses.replace(Config(), limits=dataclasses.replace(Config().limits, timezone="UTC"))
    week = profile_trace("solo", seed=0, zone=config.zone)
    return config, week, simulate(week, config, RunPodModel())


def test_the_solo_profile_is_a_week_of_over_100000_requests(solo: Any) -> None:
    _config, week, _simulation = solo
    assert len(week.arrivals) >= 100_000
    assert week.end - week.start == 7 * DAY
    weekend = [a for a in week.arrivals if datetime.fromtimestamp(a, UTC).weekday() >= 5]
    assert weekend == []


def test_on_the_solo_profile_rpm_saves_60_percent_and_stays_near_the_oracle(solo: Any) -> None:
    config, _week, simulation = solo
    rpm, always, best = (simulation.policy(name) for name in ("rpm", "always-on", "oracle"))
    assert rpm.cost_usd <= 0.4 * always.cost_usd
    # Within (boot + idle window) per wake of the oracle: each of its sessions lets rpm run at most one idle
    # window (and a boot) longer.
    model = simulation.model
    slack = best.sessions * (model.resume_boot.median_seconds + config.limits.idle_timeout_seconds)
    assert rpm.cost_usd <= best.cost_usd + slack / 3600 * model.rate_usd_per_hour
    assert best.cost_usd < rpm.cost_usd


def test_profiles_are_deterministic_for_a_seed() -> None:
    first = profile_trace("team", seed=3, zone=None, days=2)
    again = profile_trace("team", seed=3, zone=None, days=2)
    other = profile_trace("team", seed=4, zone=None, days=2)
    assert first.arrivals == again.arrivals and first.arrivals != other.arrivals
    model = dataclasses.replace(RunPodModel(), refused_resume_rate=0.3, seed=3)
    assert (simulate(first, CONFIG, model).to_json() == simulate(again, CONFIG, model).to_json())


def test_the_nightly_profile_is_one_batch_a_night() -> None:
    nightly = profile_trace("nightly", seed=0, zone=None, days=3)
    assert len(nightly.arrivals) == 3 * 3000
    result = run(nightly, limits(timezone="local"))
    assert len(result.waits) == 3


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(UsageError, match="solo, team, nightly"):
        profile_trace("weekend", seed=0, zone=None)


# -------------------------------------------------------------------------------------------- traces


def test_a_jsonl_trace_takes_iso_or_unix_times_and_durations(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"time": "2026-01-05T10:00:00Z", "duration_seconds": 2}\n\n'
                    f'{{"time": {T + 36030}, "duration_ms": 500}}\n'
                    '{"time": "2026-01-05T10:01:00"}\n')
    loaded = trace_from_file(path, None)
    assert [a - T for a in loaded.arrivals] == [36000, 36030, 36060]
    assert loaded.durations == [2.0, 0.5, 1.0]


def test_a_csv_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("time,duration_seconds\n2026-01-05T10:00:00Z,3\n1767607260,\n")
    loaded = trace_from_file(path, None)
    assert [a - T for a in loaded.arrivals] == [36000, 36060]
    assert loaded.durations == [3.0, 1.0]


@pytest.mark.parametrize(("content", "message"), [
    ("not json\n", "line 1 is not JSON"), ('{"time": "soon"}\n', "no readable `time`"),
    ('{"time": 1, "duration_seconds": "x"}\n', "not a number"), ("", "no requests")])
def test_a_bad_trace_file_is_a_usage_error_naming_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        trace_from_file(path, None)


def test_the_request_log_replays_only_what_counted_as_activity(isolated_home: Path) -> None:
    paths = resolve_paths()
    log = RequestLog(paths.request_log, keep_days=30, clock=lambda: T + 3600)
    for ended, route, cache in ((T + 100, "/v1/chat/completions", "miss"), (T + 200, "/v1/models", "bypass"),
                                (T + 300, "/v1/chat/completions", "-"), (T + 400, "/v1/completions", "hit")):
        log.append((ended, 2.0, "default", None, "m", False, "POST", route, 200, None, None, 0.0, cache, None, None,
                    None, None))
    log.close()
    loaded = trace_from_log(paths.request_log, since=T, until=T + DAY, pod=None, zone=None)
    assert [a - T for a in loaded.arrivals] == [98, 398] and loaded.durations == [2.0, 2.0]
    with pytest.raises(UsageError, match="no requests"):
        trace_from_log(paths.request_log, since=T + DAY, until=T + 2 * DAY, pod=None, zone=None)


def _log_http_pod_requests(path: Path) -> None:
    """Lines as the proxy writes them for an http pod: pass-through requests have no cache ("-"), routed by
    /pods/<name> or a listen port; one answered by the proxy itself (no pod) is not a request to the pod."""
    log = RequestLog(path, keep_days=30, clock=lambda: T + 3600)
    for ended, pod, route in ((T + 100, "comfy", "/pods/comfy"), (T + 200, None, "other"),
                              (T + 300, "comfy", "listen:comfy"), (T + 400, "comfy", "/pods/comfy")):
        log.append((ended, 2.0, pod, "pod9" if pod else None, None, False, "GET", route, 200, 0.1, None, 0.0, "-",
                    None, None, None, None))
    log.close()


def test_the_request_log_of_an_http_pod_is_replayed(isolated_home: Path) -> None:
    paths = resolve_paths()
    _log_http_pod_requests(paths.request_log)

    loaded = trace_from_log(paths.request_log, since=T, until=T + DAY, pod="comfy", zone=None)

    assert [a - T for a in loaded.arrivals] == [98, 298, 398]


def test_request_log_lines_of_an_http_pod_are_a_trace(isolated_home: Path) -> None:
    paths = resolve_paths()
    _log_http_pod_requests(paths.request_log)

    loaded = trace_from_file(paths.request_log, None)

    assert len(loaded.arrivals) == 3


# ------------------------------------------------------------------------------------- recommendation


def test_the_recommendation_is_the_cheapest_setting_within_the_wait() -> None:
    # Ten requests 400 s apart. Idle 60 s: a create, then nine resumes, billed 165 + 9 × 95 = 1020 s; waits
    # [100, 30 × 9], p95 30 + 0.55 × 70 = 68.5 s. Idle 300 s (the config): the second request (1400) comes just
    # before the stop due at 1405, so 1000-1705, then eight resumes of 335 s. Idle 600 s: up from 1000 to
    # 5205, one wait of 100 s.
    requests = trace(*[(1000 + 400 * k, 2) for k in range(10)])
    simulation = simulate(requests, CONFIG, MODEL, idle_timeouts=(60, 600))
    assert simulation.policy("idle-60s-stop").gpu_seconds == 1020
    assert simulation.policy("idle-600s-stop").gpu_seconds == 4205
    loose = recommend(simulation, CONFIG, 100.0)
    assert loose.best is not None and loose.best.name == "idle-60s-stop"
    assert loose.changes == {"idle_timeout_seconds": 60}
    assert simulation.policy("rpm").gpu_seconds == 705 + 8 * 335
    assert loose.to_json()["saved_usd"] == pytest.approx((705 + 8 * 335 - 1020) / 1000)
    assert recommend(simulation, CONFIG, 60.0).best is None  # the first create alone waits 100 s
    keep = recommend(simulate(requests, limits(idle_timeout_seconds=60), MODEL, idle_timeouts=(60, 600)),
                     limits(idle_timeout_seconds=60), None)  # already the cheapest within its own p95
    assert keep.changes == {} and keep.best is not None and keep.best.name == "rpm"


def test_simulate_json_has_the_policies_scripts_depend_on(isolated_home: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", "--profile", "nightly", "--days", "2", "--json", "--recommend"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["data"]
    names = [row["name"] for row in data["policies"]]
    assert {"always-on", "cron-5min", "rpm", "oracle"} <= set(names)
    for row in data["policies"]:
        assert {"name", "cost_usd", "gpu_hours", "cold_starts", "wait_p50_seconds", "wait_p95_seconds"} <= set(row)
        assert isinstance(row["cost_usd"], float) and isinstance(row["cold_starts"], int)
    assert data["trace"]["requests"] == 6000 and data["recommendation"] is not None


@pytest.mark.parametrize(("args", "message"), [
    (["--profile", "solo", "--from-log"], "one of --profile"), (["--resume-boot", "90:30"], "at most the p95"),
    (["--idle-timeouts", "0,60"], "positive"), (["--refused-resume-rate", "2"], "between 0 and 1")])
def test_impossible_options_are_usage_errors(isolated_home: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["simulate", "--days", "1", *args])
    assert result.exit_code == 2 and message in result.output


def test_replaying_the_log_uses_the_pods_measured_boots_and_price(isolated_home: Path) -> None:
    from runpod_manager.simulate import run_simulation_command

    paths = resolve_paths()
    paths.log_dir.mkdir(parents=True)
    now = datetime.now(UTC).timestamp()

    def at(offset: float) -> str:
        return datetime.fromtimestamp(now - 3600 + offset, UTC).isoformat().replace("+00:00", "Z")

    events = [{"time": at(0), "event": "created", "config": "default", "pod_id": "p", "cost_per_hour": 1.25},
              {"time": at(200), "event": "ready", "config": "default", "pod_id": "p"},
              {"time": at(300), "event": "stop", "config": "default", "pod_id": "p", "ok": True}]
    for start, boot in ((1000, 40), (1500, 60), (2000, 50)):  # three resumes: 40, 60 and 50 s to ready
        events += [{"time": at(start), "event": "resume", "config": "default", "pod_id": "p", "ok": True},
                   {"time": at(start + boot), "event": "ready", "config": "default", "pod_id": "p"},
                   {"time": at(start + 300), "event": "stop", "config": "default", "pod_id": "p", "ok": True}]
    paths.event_log.write_text("".join(json.dumps(event) + "\n" for event in events))
    log = RequestLog(paths.request_log, keep_days=30)
    log.append((now - 1800, 1.0, "default", "p", "m", False, "POST", "/v1/completions", 200, None, None, 0.0,
                "miss", None, None, None, None))
    log.close()
    simulation = run_simulation_command(
        CONFIG, paths, profile=None, from_log=True, trace_file=None, since_text="1d", pod=None, days=7, seed=0,
        rate=None, storage_gb=None, storage_price=0.2, resume_boot=None, fresh_boot=None, refused_resume_rate=0.0,
        idle_timeouts="60", recommend_change=False, max_p95_wait_seconds=None)
    model = simulation.model
    assert model.rate_usd_per_hour == 1.25
    assert model.resume_boot == BootTime(50.0, 59.0)  # the median and p95 of 40, 50, 60
    assert model.fresh_boot == BootTime(180.0, 420.0)  # one create is too few to replace the assumption
    assert any("measured from the event log" in note for note in simulation.notes)


def test_a_saving_within_noise_keeps_the_config() -> None:
    # A two-hour session: idle 295 s stops one pass (5 s) earlier than the config's 300 s, 0.07 % cheaper.
    requests = trace(*[(1000 + 60 * k, 2) for k in range(120)])
    simulation = simulate(requests, CONFIG, MODEL, idle_timeouts=(295,))
    assert simulation.policy("rpm").gpu_seconds - simulation.policy("idle-295s-stop").gpu_seconds == 5
    advice = recommend(simulation, CONFIG, None)
    assert advice.changes == {} and advice.best is not None and advice.best.name == "rpm"


# ----------------------------------------------------------------------------------------------- warm hours
# T is Monday 00:00 UTC. A window Mon 01:00-02:00 with the 300 s lead: the warm lease opens at 3300.


def warm(**changes: Any) -> Config:
    return limits(warm_hours="Mon 01:00-02:00", warm_idle_timeout_seconds=3600, **changes)


def test_warm_hours_start_the_pod_before_the_window_and_the_request_does_not_wait() -> None:
    # The pass at 3300 opens the lease and creates (ready 3400); the request at 3700 is served at once; idle
    # inside the window is 3600 s, so the pod runs until the window ends at 7200, where idle 300 s stops it.
    result = run(trace((3700, 2)), warm())
    assert result.waits == [] and result.waited_requests == 0
    assert result.sessions == 1
    assert result.gpu_seconds == 7200 - 3300


def test_warm_hours_open_one_lease_per_window_through_the_real_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = policy.plan

    def spy(now: datetime, *rest: Any) -> Any:
        calls.append(now.timestamp() - T)
        return real(now, *rest)

    monkeypatch.setattr(policy, "plan", spy)
    # No request at all: warm from 3300 until idle (3600 s) ends it at 6900; not opened again in the window.
    result = run(trace(), warm())
    assert result.gpu_seconds == 6900 - 3300 and result.sessions == 1
    assert calls[0] == 3300 and len(calls) == result.planner_calls


def test_on_the_solo_profile_warm_hours_save_cold_starts(solo: Any) -> None:
    config, week, simulation = solo
    with_warm = simulate(week, config, RunPodModel(), warm_hours="Mon-Fri 08:30-18:30")
    rpm, warm_row = with_warm.policy("rpm"), with_warm.policy("warm-hours")
    assert rpm.cost_usd == simulation.policy("rpm").cost_usd  # rpm's row is the same without the window
    assert len(warm_row.waits) < len(rpm.waits)
    assert warm_row.cost_usd < with_warm.policy("always-on").cost_usd
    assert "warm-hours" not in [result.name for result in simulation.policies]


def test_simulate_warm_hours_option(isolated_home: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", "--profile", "solo", "--days", "1", "--json",
                                      "--warm-hours", "Mon-Fri 08:30-18:30"])
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in json.loads(result.stdout)["data"]["policies"]]
    assert "warm-hours" in names
    bad = CliRunner().invoke(app, ["simulate", "--days", "1", "--warm-hours", "Mon-Fri 9-17"])
    assert bad.exit_code == 2 and "--warm-hours" in bad.output
