"""Task definitions keyed by content: registered once, found again after a restart, never twice.

Against local ECS (its /_localecs/stats counts every call by operation) and moto's ECS
through the real aiobotocore client; the pure parts (hash, family, parameter names) directly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from calliope_hub.catalog import Catalog
from calliope_hub.ecs.api import EcsApi, EcsTarget, aws_client
from calliope_hub.ecs.launch import slot_token, transient
from calliope_hub.ecs.secrets import (
    SecretStore,
    SecretStoreError,
    ServerSecrets,
    escape_name_part,
    server_prefix,
    split_environment,
)
from calliope_hub.ecs.slots import slot_parameter
from calliope_hub.ecs.taskdefs import (
    HASH_TAG,
    ServerLabels,
    TaskDefinitions,
    prepare_cluster,
    server_definition,
    server_family,
    slot_family,
    spec_hash,
)
from calliope_hub.ecsfacts import AWS_QUOTAS, ECS_QUOTA_CATEGORIES, SSM_QUOTA_CATEGORIES, Quota, client_quotas

CATALOG = Catalog.load()


def lab_definition(family: str, **changes: Any) -> dict[str, Any]:
    secrets = ServerSecrets.plan("/calliope/t/ada/_", {"JUPYTERHUB_API_TOKEN": "x", "JPY_API_TOKEN": "x"})
    base = {**CATALOG.task_definition("lab", local=True), **changes}
    return server_definition(base, family, secrets.references, labels=ServerLabels("t", "ada", ""))


@pytest.fixture
def family() -> str:
    """A family of the test's own: moto's server lives for the whole session."""
    return f"calliope-lab-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def api(ecs_endpoint: str) -> AsyncIterator[EcsApi]:
    client = await EcsApi.create(EcsTarget("us-east-1", ecs_endpoint))
    yield client
    await client.close()


def registrations(api: EcsApi) -> int:
    return api.calls[("RegisterTaskDefinition", "ok")]


async def test_unchanged_content_registers_once_and_a_change_exactly_once_more(api: EcsApi, family: str) -> None:
    definitions = TaskDefinitions(api)
    first = await definitions.ensure(lab_definition(family))
    assert await definitions.ensure(lab_definition(family)) == first
    assert registrations(api) == 1
    changed = await definitions.ensure(lab_definition(family, memory="4096"))
    assert changed != first and changed.endswith(":2")
    assert await definitions.ensure(lab_definition(family, memory="4096")) == changed
    assert registrations(api) == 2
    assert definitions.outcomes == {"cached": 2, "found": 0, "registered": 2}


async def test_a_restarted_hub_finds_its_revisions_by_the_hash_tag(api: EcsApi, family: str) -> None:
    before = await TaskDefinitions(api).ensure(lab_definition(family))
    await TaskDefinitions(api).ensure(lab_definition(family, memory="4096"))  # a newer revision on top
    restarted = TaskDefinitions(api)
    assert await restarted.ensure(lab_definition(family)) == before, "the older revision with the same hash"
    assert registrations(api) == 2
    assert restarted.outcomes["found"] == 1
    _, tags = await api.describe_task_definition(before)
    assert tags[HASH_TAG] == spec_hash(lab_definition(family))
    assert tags["calliope:user"] == "ada"


async def test_concurrent_first_spawns_of_one_server_register_one_revision(api: EcsApi, family: str) -> None:
    import asyncio

    definitions = TaskDefinitions(api)
    arns = await asyncio.gather(*(definitions.ensure(lab_definition(family)) for _ in range(10)))
    assert len(set(arns)) == 1
    assert registrations(api) == 1


async def test_prepare_cluster_is_idempotent_and_counted_by_local_ecs(local_ecs: Any) -> None:
    api = await EcsApi.create(EcsTarget("us-east-1", local_ecs.endpoint_url))
    try:
        first = await prepare_cluster(api, CATALOG, "calliope", local=True)
        again = await prepare_cluster(api, CATALOG, "calliope", local=True)
    finally:
        await api.close()
    assert first == again and set(first) == set(CATALOG.services)
    calls = local_ecs.stats()["calls"]
    assert calls["RegisterTaskDefinition"]["ok"] == len(CATALOG.services)
    assert calls["DescribeTaskDefinition"]["ok"] == len(CATALOG.services), "found by tag, not registered again"


async def test_registration_waits_for_the_client_quota_instead_of_being_throttled(local_ecs_factory: Any) -> None:
    local_ecs = local_ecs_factory(throttle="aws")
    api = await EcsApi.create(EcsTarget("us-east-1", local_ecs.endpoint_url))
    definitions = TaskDefinitions(api)
    try:
        for n in range(22):  # 20 burst + 2 at 1/s
            await definitions.ensure(lab_definition(f"calliope-lab-q{n}"))
    finally:
        await api.close()
    assert api.limited["RegisterTaskDefinition"] >= 2
    calls = local_ecs.stats()["calls"]["RegisterTaskDefinition"]
    # The client bucket runs at exactly ECS's rate, so a token may be a hair early (botocore retries it).
    assert calls["ok"] == 22 and calls["error"] == 0 and calls["throttled"] <= 2


def test_the_hash_covers_content_not_tags() -> None:
    plain = lab_definition("calliope-lab-t")
    assert spec_hash(plain) == spec_hash({**plain, "tags": [{"key": "k", "value": "v"}]})
    for change in ({"cpu": "2048"}, {"executionRoleArn": "arn:aws:iam::1:role/x"}, {"volumes": [{"name": "h"}]}):
        assert spec_hash({**plain, **change}) != spec_hash(plain)
    other_secret = server_definition(CATALOG.task_definition("lab", local=True), plain["family"], [])
    assert spec_hash(other_secret) != spec_hash(plain)


def test_server_families_are_ecs_names_and_never_shared() -> None:
    pairs = [("ada", ""), ("ada", "x"), ("a.da", ""), ("a_da", ""), ("ädä", ""), ("x" * 300, "y" * 300)]
    families = {server_family("calliope-lab", "hub", user, server) for user, server in pairs}
    assert len(families) == 6
    for family in families:
        assert len(family) <= 255
        assert all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in family)


def test_parameter_names_are_ssm_names_and_injective() -> None:
    pairs = [("ada", ""), ("ada", "_"), ("a@b", ""), ("a_40b", ""), ("ädä", "x/y")]
    names = {server_prefix("/calliope", "hub", user, server) for user, server in pairs}
    assert len(names) == 5
    assert escape_name_part("") == "_" and escape_name_part("a/b") == "a_2Fb"
    assert all(name.count("/") == 4 for name in names)


def test_the_token_leaves_the_environment_and_is_written_once() -> None:
    env = {"JUPYTERHUB_API_TOKEN": "t0k", "JPY_API_TOKEN": "t0k", "JUPYTERHUB_USER": "ada"}
    plain, secret = split_environment(env, ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"))
    assert plain == {"JUPYTERHUB_USER": "ada"}
    planned = ServerSecrets.plan("/c/h/ada/_", secret)
    assert planned.values == {"/c/h/ada/_/JPY_API_TOKEN": "t0k"}
    assert {ref["name"] for ref in planned.references} == {"JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"}
    assert {ref["valueFrom"] for ref in planned.references} == {"/c/h/ada/_/JPY_API_TOKEN"}


async def test_definitions_of_other_families_with_a_shared_prefix_are_not_taken(api: EcsApi, family: str) -> None:
    await TaskDefinitions(api).ensure(lab_definition(f"{family}-longer"))
    assert await TaskDefinitions(api).find(family, spec_hash(lab_definition(family))) is None


def test_slot_names_never_meet_a_servers_and_slot_families_are_ecs_names() -> None:
    slots = {slot_parameter("/calliope", "hub", "chat", size, k) for size in ("small", "s/m") for k in range(3)}
    servers = {
        server_prefix("/calliope", "hub", "slots", "chat") + "/small",
        server_prefix("/calliope", "hub", "x", ""),
    }
    assert len(slots) == 6 and not slots & servers
    assert all(name.count("/") == 6 for name in slots), "one level deeper than <root>/<hub>/<user>/<server>/<NAME>"
    families = {
        slot_family("calliope-chat", hub, size, k)
        for hub in ("h", "h.")
        for size in ("small", "x" * 300)
        for k in (0, 1)
    }
    assert len(families) == 8
    assert all(len(f) <= 255 and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in f) for f in families)


def test_a_slot_carries_the_token_and_nothing_else() -> None:
    assert slot_token({"JUPYTERHUB_API_TOKEN": "t", "JPY_API_TOKEN": "t"}) == "t"
    assert slot_token({"JUPYTERHUB_API_TOKEN": "t"}) == "t"
    assert slot_token({}) is None, "no token: the server's own definition"
    assert slot_token({"JUPYTERHUB_API_TOKEN": "t", "DB_PASSWORD": "p"}) is None, "more secrets: its own definition"
    assert slot_token({"JUPYTERHUB_API_TOKEN": "t", "JPY_API_TOKEN": "u"}) is None


def test_ssm_errors_retry_by_ssms_own_rule() -> None:
    assert SecretStoreError("PutParameter", "ThrottlingException", "Rate exceeded").transient
    assert SecretStoreError("PutParameter", "TooManyUpdates", "").transient
    assert SecretStoreError("PutParameter", "InternalServerError", "").transient
    assert SecretStoreError("PutParameter", "EndpointConnectionError", "", answered=False).transient
    for code in ("ParameterLimitExceeded", "ParameterMaxVersionLimitExceeded", "AccessDeniedException"):
        error = SecretStoreError("PutParameter", code, "")
        assert not error.transient and not transient(error) and error.code == code


def test_the_ssm_client_buckets_stay_under_ssms_write_quota() -> None:
    standard = client_quotas(SSM_QUOTA_CATEGORIES)
    higher = client_quotas(SSM_QUOTA_CATEGORIES, ssm_higher_throughput=True)
    assert standard["ssm-put-parameter"].rate == pytest.approx(3 * 0.8)
    assert higher["ssm-put-parameter"].rate == pytest.approx(10 * 0.8)
    assert set(standard) == {"ssm-put-parameter", "ssm-delete-parameter"}


def test_the_ecs_client_buckets_are_ecss_quotas_at_the_hubs_share() -> None:
    """The ECS client's buckets: its own calls' categories only, each at 0.8 of AWS's (the planner reads the same)."""
    buckets = client_quotas()
    assert set(buckets) == set(ECS_QUOTA_CATEGORIES) and "ssm-put-parameter" not in buckets
    for category, bucket in buckets.items():
        assert bucket.rate == pytest.approx(AWS_QUOTAS[category].rate * 0.8)
        assert bucket.burst == pytest.approx(AWS_QUOTAS[category].burst * 0.8)
    assert client_quotas(ssm_higher_throughput=True) == buckets, "higher throughput is Parameter Store's alone"


async def test_slot_clears_share_delete_calls_and_each_hears_how_its_call_went(local_ecs: Any) -> None:
    """SecretStore.clear: names that queue behind the delete bucket go out together, up to 10 a call."""
    target = EcsTarget("us-east-1", local_ecs.endpoint_url)
    async with aws_client("ssm", target) as ssm:
        store = SecretStore(ssm, quotas={"ssm-delete-parameter": Quota(burst=1, rate=5)})
        names = [f"/calliope/t/slots/chat/small/{i}" for i in range(25)]
        for name in names:
            await ssm.put_parameter(Name=name, Value="token", Type="SecureString", Overwrite=True)
        before = local_ecs.stats()["calls"].get("DeleteParameters", {}).get("ok", 0)
        await asyncio.gather(*(store.clear(name) for name in names))
        calls = local_ecs.stats()["calls"]["DeleteParameters"]["ok"] - before
        assert calls <= 4, f"{calls} DeleteParameters for 25 names"  # the first alone, then full batches
        assert (await ssm.get_parameters(Names=names[:10]))["InvalidParameters"] == names[:10]
        assert (await ssm.get_parameters(Names=names[10:20]))["InvalidParameters"] == names[10:20]
    async with aws_client("ssm", target, max_attempts=1) as ssm:  # no retry: SSM's failure reaches the batch
        store = SecretStore(ssm, quotas={})
        assert local_ecs.request("POST", "/_localecs/faults/unavailable", {"seconds": 2})[0] == 200
        results = await asyncio.gather(*(store.clear(name) for name in names[:3]), return_exceptions=True)
        assert [type(result) for result in results] == [SecretStoreError] * 3, results
