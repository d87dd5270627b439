"""The catalog as users meet it through a real hub: the REST API and the spawn form.

A real JupyterHub with configurable-http-proxy and ECSSpawner, on a local ECS in sim mode (no
server process is needed to judge options). Errors users see name their options and the
catalog's names, never a server path or a traceback; the seeds' body spawns a medium Lab.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import boto3
import pytest

from calliope_hub.catalog import BUILTIN_DIRECTORY, read_tags
from calliope_hub.tools.local.hubconfig import HubSettings
from calliope_hub.tools.local.stack import LocalStack, RunningEcs, StackSpec
from tests.hubtest import eventually, require_proxy, server_ready

PASSWORD = "catalog-test-password"
#: What a path on this server looks like in a message: the package's or the test's directories.
SERVER_PATHS = (str(BUILTIN_DIRECTORY.parent.parent), "/tmp/", "site-packages")


@pytest.fixture
async def hub(local_ecs, tmp_path: Path) -> AsyncIterator[LocalStack]:
    require_proxy()
    spec = StackSpec(
        hub=HubSettings(user_password=PASSWORD, poll_interval=2),
        ecs=RunningEcs(local_ecs.endpoint_url),
        workdir=tmp_path,
    )
    stack = LocalStack(spec)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.close()


def assert_user_safe(text: str) -> None:
    for path in SERVER_PATHS:
        assert path not in text, f"a server path ({path}) reached the user: {text[:500]}"
    assert "Traceback" not in text and 'File "' not in text


async def test_seed_body_through_the_api_spawns_a_medium_lab_and_bad_options_are_user_safe_400s(
    hub: LocalStack, local_ecs
) -> None:
    api = hub.api
    assert (await api.request("POST", "/users/seed")).status == 201
    answer = await api.request(
        "POST", "/users/seed/server", {"user_options": {"instance_type": "lab", "instance_size": "medium"}}
    )
    assert answer.status in (201, 202), answer.text
    model = await eventually(lambda: server_ready(api, "seed"), 30, "the seed user's server ready")
    assert model["user_options"] == {"instance_type": "lab", "instance_size": "medium"}
    ecs = boto3.client("ecs", region_name="us-east-1", endpoint_url=local_ecs.endpoint_url)
    (arn,) = ecs.list_tasks(cluster="calliope")["taskArns"]
    (task,) = ecs.describe_tasks(cluster="calliope", tasks=[arn], include=["TAGS"])["tasks"]
    tags = read_tags(task["tags"])
    assert (tags["user"], tags["service"], tags["size"]) == ("seed", "lab", "medium")
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("2048", "8192")

    await api.request("POST", "/users/bad")
    for options, expected in [
        ({"service": "lab", "size": "huge"}, "unknown size 'huge' for service 'lab'"),
        ({"instance_type": "lab", "service": "chat"}, "name the same choice but differ"),
        ({"image": "evil/miner"}, "option 'image' cannot be set"),
    ]:
        answer = await api.request("POST", "/users/bad/server", {"user_options": options})
        assert answer.status == 400, answer.text
        assert expected in answer.json()["message"]
        assert_user_safe(answer.text)
    assert (await api.request("GET", "/users/bad")).json()["servers"] == {}


def xsrf_of(page: str) -> str:
    """The page's XSRF token: the login form's _xsrf field, or the token JupyterHub's pages carry for scripts."""
    found = re.search(r'name="_xsrf" value="([^"]+)"', page) or re.search(r'xsrf_token: "([^"]+)"', page)
    assert found, "the page carries an XSRF token"
    return found.group(1)


async def login(session: aiohttp.ClientSession, hub_url: str, user: str) -> None:
    """Log `user` in through the login form, as a browser does."""
    async with session.get(f"{hub_url}/hub/login") as page:
        form = {"username": user, "password": PASSWORD, "_xsrf": xsrf_of(await page.text())}
    async with session.post(f"{hub_url}/hub/login", data=form, allow_redirects=False) as answer:
        assert answer.status == 302, await answer.text()


#: posted spawn forms, and what the page must then say
BAD_FORMS = [
    ({"service": "lab", "size": "chat/medium"}, "the size 'chat/medium' belongs to service 'chat'"),
    ({"service": "chat", "size": "chat/large"}, "service 'chat' does not offer size 'large'"),
    ({"service": "rstudio", "size": "lab/small"}, "belongs to service 'lab'"),
    ({"service": "lab", "size": "lab/small", "image": "evil/miner"}, "option 'image' cannot be set"),
]


async def test_spawn_form_shows_the_catalogs_message_never_a_bare_500(hub: LocalStack) -> None:
    # unsafe: the hub is at 127.0.0.1, and aiohttp keeps no cookies of IP hosts otherwise.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await login(session, hub.url, "formuser")
        async with session.get(f"{hub.url}/hub/spawn/formuser") as page:
            assert page.status == 200
            spawn_page = await page.text()
        assert 'id="calliope-service"' in spawn_page
        for form, expected in BAD_FORMS:
            async with session.post(
                f"{hub.url}/hub/spawn/formuser", data={**form, "_xsrf": xsrf_of(spawn_page)}, allow_redirects=False
            ) as answer:
                text = await answer.text()
            assert answer.status in (200, 400), (form, answer.status, text[:500])
            assert expected in text.replace("&#39;", "'").replace("&#x27;", "'"), form
            assert 'id="calliope-service"' in text, "the form is shown again, with the message"
            assert_user_safe(text)
    assert (await hub.api.request("GET", "/users/formuser")).json()["servers"] == {}
