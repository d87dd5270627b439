"""c.CalliopePool: what a pool may say, and the pools refused at hub start because they cannot be honest."""

from __future__ import annotations

from datetime import datetime

import pytest
from traitlets.config import Config

from calliope_hub.catalog import load_catalog
from calliope_hub.pool.config import PoolConfigError, PoolSettings, PoolSpec, parse_pools

CATALOG = load_catalog(None)


def settings(pools: dict, *, local: bool = True, **other: object) -> PoolSettings:
    config = Config()
    config.CalliopePool.pools = pools
    for name, value in other.items():
        setattr(config.CalliopePool, name, value)
    return PoolSettings.from_config(config, CATALOG, local=local)


def test_a_pool_with_a_schedule_targets_more_while_its_window_is_open() -> None:
    window = {"days": "mon-fri", "start": "08:45", "end": "09:15", "min_idle": 200}
    (pool,) = settings({"chat/small": {"min_idle": 2, "max": 250, "max_idle_age": 900, "schedule": [window]}}).pools
    assert pool == PoolSpec("chat", "small", 2, 250, 900.0, pool.schedule)
    monday = datetime(2026, 11, 30, 8, 50)
    assert pool.target(monday) == 200
    assert pool.target(monday.replace(hour=9, minute=15)) == 2, "the end is not in the window"
    assert pool.target(datetime(2026, 12, 5, 8, 50)) == 2, "Saturday"


@pytest.mark.parametrize(
    ("pools", "field"),
    [
        ({"chat": {}}, "SERVICE/SIZE"),
        ({"chat/small": {"max": 0}}, "['chat/small'].max"),
        ({"chat/small": {"max": 2, "min_idle": 3}}, "min_idle"),
        ({"chat/small": {"max_idle_age": 5}}, "max_idle_age"),
        ({"chat/small": {"size": "small"}}, "unknown field(s) size"),
        ({"chat/small": {"schedule": [{"days": "mon-fri", "start": "9:00", "end": "10:00", "min_idle": 1}]}}, "start"),
        ({"chat/small": {"schedule": [{"days": "fri-mon", "start": "09:00", "end": "10:00", "min_idle": 1}]}}, "days"),
        ({"chat/small": {"schedule": [{"days": "mon", "start": "10:00", "end": "09:00", "min_idle": 1}]}}, "end"),
    ],
)
def test_a_bad_pool_is_refused_naming_its_field(pools: dict, field: str) -> None:
    with pytest.raises(PoolConfigError, match=r"c\.CalliopePool\.pools") as caught:
        parse_pools(pools)
    assert field in str(caught.value)


def test_a_service_with_per_user_storage_cannot_be_pooled() -> None:
    with pytest.raises(PoolConfigError, match="EFS") as caught:
        settings({"lab/small": {}})
    assert "lab/small" in str(caught.value) and "cannot carry" in str(caught.value)


@pytest.mark.parametrize(
    ("pools", "words"),
    [({"nope/small": {}}, "no service 'nope'"), ({"chat/large": {}}, "offers no size 'large'")],
)
def test_a_pool_must_name_a_catalog_choice(pools: dict, words: str) -> None:
    with pytest.raises(PoolConfigError, match=words):
        settings(pools)


def test_a_service_without_a_command_cannot_be_pooled_on_ecs() -> None:
    """Chat runs its image's entrypoint on ECS, which the launcher cannot know; locally it has a command."""
    with pytest.raises(PoolConfigError, match="no command"):
        settings({"chat/small": {}}, local=False)
    assert settings({"chat/small": {}}, local=True).pools


def test_a_bad_time_zone_or_interval_is_refused() -> None:
    with pytest.raises(PoolConfigError, match="Mars/Olympus"):
        settings({}, timezone="Mars/Olympus")
    with pytest.raises(Exception, match="interval"):
        settings({}, interval=0.01)


def test_an_entry_point_is_module_colon_function() -> None:
    assert settings({}, entry_points={"lab": "jupyterhub.singleuser:main"}).entry_points == {
        "lab": "jupyterhub.singleuser:main"
    }
    with pytest.raises(PoolConfigError, match=r"entry_points\['lab'\]: MODULE:FUNCTION"):
        settings({}, entry_points={"lab": "jupyterhub-singleuser"})
