"""Choosing: user_options (or the spawn form) to a Choice from the catalog, or an error a user may read;
the seeds' request body through a real spawner on local ECS.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tornado import web

from calliope_hub.catalog import BUILTIN_DIRECTORY, Catalog, CatalogError, read_tags
from tests.spawner.conftest import spawners_on  # noqa: F401  (a fixture: spawners on a local ECS of the test's own)

# --- choosing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "service", "size", "cpu", "memory"),
    [
        ({}, "lab", "small", 1024, 2048),
        ({"service": "lab", "size": "medium"}, "lab", "medium", 2048, 8192),
        ({"service": "chat"}, "chat", "small", 512, 1024),
        ({"service": "waiide", "size": "large"}, "waiide", "large", 4096, 16384),
        ({"size": "large"}, "lab", "large", 4096, 16384),
        ({"service": None, "size": None}, "lab", "small", 1024, 2048),
        # The seeds' names for the same two choices (their load test's body), and both names agreeing.
        ({"instance_type": "lab", "instance_size": "medium"}, "lab", "medium", 2048, 8192),
        ({"instance_type": "chat"}, "chat", "small", 512, 1024),
        ({"service": "waiide", "instance_type": "waiide", "instance_size": "large"}, "waiide", "large", 4096, 16384),
        ({"size": "medium", "instance_size": None}, "lab", "medium", 2048, 8192),
    ],
)
def test_choose_good_options(catalog: Catalog, options, service, size, cpu, memory) -> None:
    choice = catalog.choose(options)
    assert (choice.service.name, choice.size_name, choice.size.cpu, choice.size.memory) == (service, size, cpu, memory)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"service": "rstudio"}, "unknown service 'rstudio'; choose one of: lab, chat, waiide"),
        (
            {"service": "lab", "size": "huge"},
            "unknown size 'huge' for service 'lab'; choose one of: small, medium, large",
        ),
        ({"service": "chat", "size": "large"}, "service 'chat' does not offer size 'large'; it offers: small, medium"),
        ({"image": "evil/miner:latest"}, "option 'image' cannot be set: only 'service' and 'size' can be chosen"),
        ({"service": "lab", "command": ["sh"]}, "option 'command' cannot be set"),
        ({"cpu": 16384, "memory": 122880}, "options 'cpu', 'memory' cannot be set"),
        ({"service": ["lab"]}, "option 'service' must be a name (a string), not ['lab']"),
        ({"service": "x" * 500}, "unknown service 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...; choose"),
        (["lab"], "user_options must be an object"),
        ({"instance_type": "rstudio"}, "unknown service 'rstudio'; choose one of: lab, chat, waiide"),
        ({"instance_type": "chat", "instance_size": "large"}, "service 'chat' does not offer size 'large'"),
        ({"instance_type": "lab", "instance_image": "x"}, "option 'instance_image' cannot be set"),
        ({"instance_size": 3}, "option 'size' must be a name (a string), not 3"),
        (
            {"service": "lab", "instance_type": "chat"},
            "options 'service' and 'instance_type' name the same choice but differ ('lab' and 'chat'); send one",
        ),
        ({"size": "small", "instance_size": "large"}, "options 'size' and 'instance_size' name the same choice"),
    ],
)
def test_choose_refuses_anything_outside_the_catalog(catalog: Catalog, options, message) -> None:
    with pytest.raises(CatalogError) as caught:
        catalog.choose(options)
    assert message in str(caught.value)


# Whatever a stranger sends as user_options or as the spawn form: a Choice from the catalog, or a
# CatalogError that names neither a server path nor any of Python's internals.
OPTION_NAMES = st.sampled_from(["service", "size", "instance_type", "instance_size", "image", "_xsrf", "x"])
OPTION_VALUES = st.one_of(
    st.none(),
    st.sampled_from(["lab", "chat", "waiide", "small", "medium", "large", "lab/large", "chat/large"]),
    st.text(max_size=60),
    st.integers(),
    st.lists(st.text(max_size=5), max_size=2),
)


def assert_user_safe(message: str) -> None:
    assert str(BUILTIN_DIRECTORY.parent) not in message and "/services" not in message
    assert "Traceback" not in message and "pydantic" not in message and "\n" not in message


@given(st.dictionaries(OPTION_NAMES, OPTION_VALUES, max_size=4))
def test_any_user_options_give_a_choice_or_a_user_safe_error(catalog: Catalog, options: dict) -> None:
    try:
        choice = catalog.choose(options)
    except CatalogError as error:
        assert_user_safe(str(error))
    else:
        assert choice.size is catalog.services[choice.service.name].sizes[choice.size_name]


@given(st.dictionaries(OPTION_NAMES, st.lists(st.text(max_size=30), min_size=1, max_size=2), max_size=4))
def test_any_spawn_form_gives_a_choice_or_a_user_safe_error(catalog: Catalog, formdata: dict) -> None:
    try:
        choice = catalog.choose(catalog.options_from_form(formdata))
    except CatalogError as error:
        assert_user_safe(str(error))
    else:
        assert choice.service.name in catalog.services


# --- the seeds' request body, through a real spawner on local ECS -----------------------------------

# The body of the load test in the seeds' performance guide, sent by the original deployments' scripts.
SEED_BODY = {"instance_type": "lab", "instance_size": "medium"}


async def test_seed_request_body_spawns_a_medium_lab(local_ecs, spawners_on) -> None:
    make = await spawners_on(local_ecs.endpoint_url)
    spawner = make(user_options=dict(SEED_BODY))
    await spawner._run_apply_user_options(spawner.user_options)
    await spawner.start()
    try:
        api = await spawner._ecs()
        task = (await api.describe_tasks("calliope", [spawner.task_arn])).tasks[0]
        # each server runs its own revision of the service's family (its secrets' names: ecs/taskdefs.py)
        assert task["taskDefinitionArn"].split("/")[-1].startswith("calliope-lab-")
        assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("2048", "8192")
        assert read_tags(task["tags"])["service"] == "lab" and read_tags(task["tags"])["size"] == "medium"
        state = spawner.get_state()
        assert (state["service"], state["size"]) == ("lab", "medium")
    finally:
        await spawner.stop()


async def test_seed_names_that_disagree_are_a_400_and_start_nothing(local_ecs, spawners_on) -> None:
    make = await spawners_on(local_ecs.endpoint_url)
    options = {"service": "chat", **SEED_BODY}
    spawner = make(user_options=options)
    with pytest.raises(web.HTTPError) as caught:
        await spawner._run_apply_user_options(options)
    assert caught.value.status_code == 400
    assert "options 'service' and 'instance_type' name the same choice but differ" in caught.value.log_message
    with pytest.raises(web.HTTPError):
        await spawner.start()
    assert "RunTask" not in local_ecs.stats()["calls"]
    assert spawner.task_arn == ""
