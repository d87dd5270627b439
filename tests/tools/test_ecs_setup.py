"""`calliope-hub ecs setup` against local ECS: dry run reads only, a real run registers once, again nothing."""

from __future__ import annotations

from typing import Any

import pytest

from calliope_hub.cli import main


def calls(local_ecs: Any, operation: str) -> int:
    return int(local_ecs.stats()["calls"].get(operation, {}).get("ok", 0))


def test_dry_run_changes_nothing_then_setup_registers_once(local_ecs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    setup = ["ecs", "setup", "--endpoint-url", local_ecs.endpoint_url, "--cluster", "fresh"]
    assert main([*setup, "--dry-run"]) == 1, "a missing cluster without --create-cluster is a failure"
    assert main([*setup, "--dry-run", "--create-cluster"]) == 0
    out = capsys.readouterr().out
    assert "cluster fresh: MISSING" in out and "cluster fresh: would create" in out
    assert "lab: would register calliope-lab" in out
    assert calls(local_ecs, "RegisterTaskDefinition") == calls(local_ecs, "CreateCluster") == 0

    assert main([*setup, "--create-cluster"]) == 0
    assert "cluster fresh: created" in capsys.readouterr().out
    assert main(setup) == 0
    out = capsys.readouterr().out
    assert "cluster fresh: exists" in out and out.count(": up to date: ") == 3
    assert calls(local_ecs, "RegisterTaskDefinition") == 3
    assert calls(local_ecs, "CreateCluster") == 1


def test_a_bad_catalog_is_refused_before_any_call(local_ecs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ecs", "setup", "--endpoint-url", local_ecs.endpoint_url, "--catalog", "/nonexistent"]) == 2
    assert "catalog directory /nonexistent does not exist" in capsys.readouterr().err
    assert local_ecs.stats()["calls"] == {}
