"""Fixtures for the event tests: the scripted ECS (it counts every DescribeTasks) and a clock."""

from __future__ import annotations

import pytest

from tests.ecs.scripted import Clock, ScriptedEcs


@pytest.fixture
def ecs() -> ScriptedEcs:
    return ScriptedEcs()


@pytest.fixture
def clock() -> Clock:
    return Clock()
