"""Sim timings: every state of ECS's lifecycle held for its time, the `fargate` preset, and faults mid-way."""

from __future__ import annotations

import argparse
import random
import time

from calliope_hub.localecs.cli import add_arguments, config_from
from calliope_hub.localecs.config import SIM_TIMINGS, LocalEcsConfig
from calliope_hub.localecs.model import LIFECYCLE
from calliope_hub.localecs.sim import SimRunner
from tests.localecs.test_sim import client, prepare, start, wait_status

#: the fargate preset, 50 times faster and without jitter: the same schedule in about a second.
SCALED_FARGATE = {field: value / 50 for field, value in SIM_TIMINGS["fargate"].items() if field != "sim_jitter"}
#: asyncio may fire a timer up to its clock resolution early; allow a little more.
EARLY = 0.005


def record_transitions(handle) -> list[tuple[str, float]]:
    """(lastStatus, when) for every change of every task, as local ECS makes it."""
    seen: list[tuple[str, float]] = []
    handle.server.plane.listeners.append(lambda task: seen.append((task.last_status, time.monotonic())))
    return seen


def test_fargate_timing_holds_each_state_for_its_time(local_ecs_factory):
    handle = local_ecs_factory(**SCALED_FARGATE, sim_jitter=0.0)
    seen = record_transitions(handle)
    ecs = client(handle)
    prepare(ecs)
    (arn,) = start(ecs)
    wait_status(ecs, arn, "RUNNING")
    assert ecs.stop_task(task=arn, reason="culled")["task"]["lastStatus"] == "DEACTIVATING"
    stopped = wait_status(ecs, arn, "STOPPED")
    assert [status for status, _ in seen] == list(LIFECYCLE)
    held = {status: seen[i + 1][1] - when for i, (status, when) in enumerate(seen[:-1]) if status != "RUNNING"}
    for status, seconds in held.items():
        assert seconds >= SCALED_FARGATE[f"sim_{status.lower()}_s"] - EARLY, (status, seconds)
    assert stopped["containers"][0]["exitCode"] == 0 and stopped["stopCode"] == "UserInitiated"


def test_fast_timing_steps_straight_through(local_ecs):
    seen = record_transitions(local_ecs)
    ecs = client(local_ecs)
    prepare(ecs)
    (arn,) = start(ecs)
    wait_status(ecs, arn, "RUNNING")
    assert ecs.stop_task(task=arn)["task"]["lastStatus"] == "STOPPING"
    wait_status(ecs, arn, "STOPPED")
    times = dict(seen)
    assert times["RUNNING"] - times["ACTIVATING"] < 0.05 and times["STOPPING"] - times["DEACTIVATING"] < 0.05


def test_fargate_preset_is_a_realistic_cold_start_and_stop():
    fargate = SIM_TIMINGS["fargate"]
    jitter = fargate["sim_jitter"]
    start_s = fargate["sim_provisioning_s"] + fargate["sim_pending_s"] + fargate["sim_activating_s"]
    stop_s = fargate["sim_deactivating_s"] + fargate["sim_stopping_s"] + fargate["sim_deprovisioning_s"]
    assert start_s * (1 - jitter) >= 25 and start_s * (1 + jitter) <= 65  # Fargate's ~30-60 s to RUNNING
    assert stop_s * (1 - jitter) >= 10 and stop_s * (1 + jitter) <= 60  # tens of seconds to STOPPED
    assert fargate["sim_stopping_s"] * (1 + jitter) < LocalEcsConfig().stop_timeout_s  # exits before SIGKILL
    runner = SimRunner(provisioning_s=fargate["sim_provisioning_s"], jitter=jitter, rng=random.Random(7))
    drawn = [runner.dwell("PROVISIONING") for _ in range(2000)]
    low, high = fargate["sim_provisioning_s"] * (1 - jitter), fargate["sim_provisioning_s"] * (1 + jitter)
    assert low <= min(drawn) and max(drawn) <= high and max(drawn) - min(drawn) > (high - low) * 0.9
    assert {field: getattr(LocalEcsConfig(), field) for field in SIM_TIMINGS["fast"]} == SIM_TIMINGS["fast"]


def test_a_kill_while_deactivating_ends_the_wait(local_ecs_factory):
    handle = local_ecs_factory(sim_deactivating_s=60.0)
    ecs = client(handle)
    prepare(ecs)
    (arn,) = start(ecs)
    wait_status(ecs, arn, "RUNNING")
    assert ecs.stop_task(task=arn)["task"]["lastStatus"] == "DEACTIVATING"
    assert handle.kill(arn.rsplit("/", 1)[-1], exit_code=9)[0] == 202
    stopped = wait_status(ecs, arn, "STOPPED", timeout=5)
    assert stopped["containers"][0]["exitCode"] == 9 and stopped["stopCode"] == "UserInitiated"


def test_a_stop_while_activating_never_runs(local_ecs_factory):
    handle = local_ecs_factory(sim_activating_s=60.0)
    seen = record_transitions(handle)
    ecs = client(handle)
    prepare(ecs)
    (arn,) = start(ecs)
    wait_status(ecs, arn, "ACTIVATING")
    ecs.stop_task(task=arn)
    stopped = wait_status(ecs, arn, "STOPPED", timeout=5)
    assert "RUNNING" not in [status for status, _ in seen] and "startedAt" not in stopped


def test_a_container_slower_than_the_stop_timeout_is_killed(local_ecs_factory):
    handle = local_ecs_factory(sim_stopping_s=30.0, stop_timeout_s=0.1)
    ecs = client(handle)
    prepare(ecs)
    (arn,) = start(ecs)
    wait_status(ecs, arn, "RUNNING")
    ecs.stop_task(task=arn)
    assert wait_status(ecs, arn, "STOPPED", timeout=5)["containers"][0]["exitCode"] == 137


def test_sim_timing_flag_picks_a_preset_and_flags_override_it():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from(parser.parse_args(["--sim-timing", "fargate", "--sim-pending", "2"]))
    expected = {**SIM_TIMINGS["fargate"], "sim_pending_s": 2.0}
    assert {field: getattr(config, field) for field in expected} == expected
    config = config_from(parser.parse_args([]))
    assert {field: getattr(config, field) for field in SIM_TIMINGS["fast"]} == SIM_TIMINGS["fast"]
