"""The service catalog: loading and validating YAML, user choices, the spawn form, RunTask requests.

RunTask requests are also sent for real, through boto3, to moto's ECS server.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import boto3
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tornado import web

from calliope_hub.catalog import (
    BUILTIN_DIRECTORY,
    Catalog,
    CatalogConfigError,
    CatalogError,
    Placement,
    TaskIdentity,
    decode_tag_value,
    encode_tag_value,
    load_catalog,
    read_tags,
    run_task_request,
)
from tests.spawner.conftest import spawners_on  # noqa: F401  (a fixture: spawners on a local ECS of the test's own)

REGION = "us-east-1"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def identity_for(choice, attempt: int = 0, user: str = "alice@example.org", server: str = "") -> TaskIdentity:
    return TaskIdentity(
        hub_id="hub-1",
        user=user,
        server_name=server,
        service=choice.service.name,
        size=choice.size_name,
        attempt=attempt,
    )


# --- loading the built-in catalog ------------------------------------------------------------


def test_builtin_catalog_has_the_three_services_with_the_seed_health_checks(catalog: Catalog) -> None:
    assert list(catalog.services) == ["lab", "chat", "waiide"]  # the default first, as the form shows it
    assert catalog.default_service == "lab"
    timings = {
        name: (s.health_check.interval, s.health_check.retries, s.health_check.start_period)
        for name, s in catalog.services.items()
    }
    assert timings == {"lab": (30, 8, 60), "chat": (15, 8, 45), "waiide": (15, 8, 45)}
    lab, chat, waiide = (catalog.services[n] for n in ("lab", "chat", "waiide"))
    assert (lab.port, lab.command, lab.local.command, lab.local.stand_in) == (
        8888,
        ["jupyterhub-singleuser"],
        ["jupyterhub-singleuser"],
        False,
    )
    assert chat.local.command == ["python", "-m", "calliope_hub.standins", "chat"] and chat.local.stand_in
    assert waiide.local.command == ["python", "-m", "calliope_hub.standins", "waiide"] and waiide.local.stand_in
    assert "large" not in chat.sizes and "large" in lab.sizes and "large" in waiide.sizes
    assert (lab.sizes["small"].cpu, lab.sizes["small"].memory) == (1024, 2048)


def test_task_definition_for_ecs_and_for_local_ecs(catalog: Catalog) -> None:
    remote = catalog.task_definition("lab", local=False)
    assert remote["family"] == "calliope-lab"
    assert (remote["networkMode"], remote["requiresCompatibilities"]) == ("awsvpc", ["FARGATE"])
    assert (remote["cpu"], remote["memory"]) == ("1024", "2048")  # the smallest size, as strings
    (container,) = remote["containerDefinitions"]
    assert container["essential"] and container["image"] == "quay.io/jupyter/base-notebook:latest"
    assert container["portMappings"] == [{"containerPort": 8888, "protocol": "tcp"}]
    assert container["memoryReservation"] == 2048  # never above the smallest size's task memory
    assert container["healthCheck"]["command"][0] == "CMD-SHELL"
    assert (container["healthCheck"]["interval"], container["healthCheck"]["startPeriod"]) == (30, 60)

    chat_remote = catalog.task_definition("chat", local=False)["containerDefinitions"][0]
    assert "command" not in chat_remote  # the image's own entrypoint
    chat_local = catalog.task_definition("chat", local=True)["containerDefinitions"][0]
    assert chat_local["command"] == ["python", "-m", "calliope_hub.standins", "chat"]
    assert "healthCheck" not in chat_local
    with pytest.raises(CatalogConfigError, match="unknown service 'nope'"):
        catalog.task_definition("nope", local=True)


# --- bad catalog files -------------------------------------------------------------------------


def broken_catalog(tmp_path: Path, edit) -> Path:
    """A copy of the built-in catalog whose lab.yaml went through `edit`."""
    directory = tmp_path / "services"
    shutil.copytree(BUILTIN_DIRECTORY, directory)
    lab = directory / "lab.yaml"
    data = yaml.safe_load(lab.read_text())
    edited = edit(data)
    lab.write_text(edited if isinstance(edited, str) else yaml.safe_dump(data, sort_keys=False))
    return directory


def _set(path: str, value):
    def edit(data):
        *parents, last = path.split(".")
        target = data
        for part in parents:
            target = target[part]
        target[last] = value

    return edit


def _drop(key: str):
    def edit(data):
        del data[key]

    return edit


def line_of(text: str, *keys: str) -> int:
    """The 1-based line of the block-style key path `keys` in `text` (1 for the whole file)."""
    lines, position = text.splitlines(), 0
    for depth, key in enumerate(keys):
        prefix = "  " * depth + key + ":"
        position = next(n for n in range(position, len(lines)) if lines[n].startswith(prefix))
    return position + 1 if keys else 1


# case: (edit of lab.yaml, the key path the error must point at, what the message must say)
BAD_FILES = {
    "invalid Fargate pair": (
        _set("sizes.small.memory", 512),
        ("sizes", "small"),
        "sizes.small: cpu 1024 with memory 512 is not a valid Fargate pair; "
        "for cpu 1024 memory must be 2048 to 8192 MiB in steps of 1024",
    ),
    "cpu Fargate lacks": (
        _set("sizes.small.cpu", 300),
        ("sizes", "small"),
        "cpu 300 is not a Fargate cpu value; allowed: 256, 512",
    ),
    "memory as text": (
        _set("sizes.small.memory", "2048"),
        ("sizes", "small", "memory"),
        "sizes.small.memory: Input should be a valid integer",
    ),
    "unknown top-level key": (_set("cpu", 4096), ("cpu",), "cpu: unknown key 'cpu' (allowed here: name, display_name"),
    "unknown nested key": (
        _set("health_check.intervall", 10),
        ("health_check", "intervall"),
        "health_check.intervall: unknown key 'intervall' (allowed here: command, interval, timeout",
    ),
    "unknown size key": (
        _set("sizes.small.gpu", 1),
        ("sizes", "small", "gpu"),
        "sizes.small.gpu: unknown key 'gpu' (allowed here: cpu, memory",
    ),
    "missing image": (_drop("image"), (), "image: required key is missing"),
    "empty image": (_set("image", ""), ("image",), "image: String should have at least 1 character"),
    "default size not offered": (
        _set("default_size", "huge"),
        ("default_size",),
        "default_size: 'huge' is not one of its sizes (small, medium, large)",
    ),
    "health check out of ECS range": (
        _set("health_check.interval", 1),
        ("health_check", "interval"),
        "health_check.interval: Input should be greater",
    ),
    "health check not CMD": (
        _set("health_check.command", ["curl", "x"]),
        ("health_check", "command"),
        "health_check.command: must start with CMD or CMD-SHELL",
    ),
    "size name with a slash": (
        _set("sizes.big/one", {"cpu": 256, "memory": 512}),
        ("sizes",),
        "sizes: size name 'big/one' must be",
    ),
    "name not the file name": (_set("name", "chat"), ("name",), "name: 'chat' must match the file name 'lab'"),
    "not a mapping": (lambda data: "- lab\n- chat\n", (), "must be a mapping of keys"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_catalog_file_gives_one_error_naming_file_line_and_field(tmp_path: Path, case: str) -> None:
    edit, keys, expected = BAD_FILES[case]
    directory = broken_catalog(tmp_path, edit)
    path = directory / "lab.yaml"
    with pytest.raises(CatalogConfigError) as caught:
        Catalog.load(directory)
    message = str(caught.value)
    assert message.startswith(f"{path}: line {line_of(path.read_text(), *keys)}: ")
    assert expected in message
    assert "\n" not in message and "Traceback" not in message and "pydantic" not in message


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    directory = broken_catalog(tmp_path, lambda data: "name: lab\nimage: x\nsizes: [unclosed\n")
    with pytest.raises(CatalogConfigError) as caught:
        load_catalog(directory)
    assert str(caught.value) == (
        f"{directory / 'lab.yaml'}: line 4, column 1: not valid YAML: expected ',' or ']', but got '<stream end>'"
    )


def test_several_problems_in_one_file_are_one_message(tmp_path: Path) -> None:
    def edit(data):
        data["sizes"]["small"]["memory"] = 512
        data["health_check"]["retries"] = 0

    directory = broken_catalog(tmp_path, edit)
    text = (directory / "lab.yaml").read_text()
    with pytest.raises(CatalogConfigError) as caught:
        load_catalog(directory)
    message = str(caught.value)
    assert f"line {line_of(text, 'health_check', 'retries')}: health_check.retries: " in message
    assert f"; line {line_of(text, 'sizes', 'small')}: sizes.small: cpu 1024 with memory 512" in message


def test_catalog_directory_problems(tmp_path: Path) -> None:
    with pytest.raises(CatalogConfigError, match="does not exist"):
        Catalog.load(tmp_path / "missing")
    with pytest.raises(CatalogConfigError, match=r"has no <service>\.yaml files"):
        Catalog.load(tmp_path)
    shutil.copy(BUILTIN_DIRECTORY / "chat.yaml", tmp_path / "chat.yaml")
    only_chat = Catalog.load(tmp_path)
    assert only_chat.default_service == "chat"
    with pytest.raises(CatalogConfigError, match="default service 'lab' is not in the catalog"):
        Catalog.load(tmp_path, default_service="lab")


def test_load_catalog_is_the_hub_start_check(tmp_path: Path) -> None:
    """'' and None are the built-in catalog; a load error is not a user's CatalogError (it names paths)."""
    assert list(load_catalog("").services) == list(load_catalog(None).services) == ["lab", "chat", "waiide"]
    assert next(iter(load_catalog(str(BUILTIN_DIRECTORY), default_service="chat").services)) == "chat"
    directory = broken_catalog(tmp_path, _set("sizes.small.memory", 512))
    with pytest.raises(CatalogConfigError) as caught:
        load_catalog(str(directory))
    assert not isinstance(caught.value, CatalogError)


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


# --- RunTask requests ---------------------------------------------------------------------------


def test_run_task_request_fields(catalog: Catalog) -> None:
    choice = catalog.choose({"service": "lab", "size": "medium"})
    identity = identity_for(choice, server="gpu work")
    placement = Placement(cluster="c1", subnets=["subnet-1"], security_groups=("sg-1",), assign_public_ip=True)
    request = run_task_request(choice, identity, placement, {"JUPYTERHUB_API_TOKEN": "t"}, ["--debug"])

    assert (request["cluster"], request["taskDefinition"], request["count"]) == ("c1", "calliope-lab", 1)
    assert request["launchType"] == "FARGATE" and "capacityProviderStrategy" not in request
    assert request["networkConfiguration"] == {
        "awsvpcConfiguration": {"subnets": ["subnet-1"], "securityGroups": ["sg-1"], "assignPublicIp": "ENABLED"}
    }
    overrides = request["overrides"]
    assert (overrides["cpu"], overrides["memory"]) == ("2048", "8192")
    assert overrides["containerOverrides"] == [
        {
            "name": "notebook",
            "environment": [
                {"name": "JUPYTERHUB_API_TOKEN", "value": "t"},
                {"name": "CALLIOPE_SERVICE", "value": "lab"},
                {"name": "CALLIOPE_SIZE", "value": "medium"},
            ],
            "command": ["jupyterhub-singleuser", "--debug"],
        }
    ]
    assert len(request["tags"]) <= 50
    assert read_tags(request["tags"]) == {
        "hub": "hub-1",
        "user": "alice@example.org",
        "server": "gpu work",
        "service": "lab",
        "size": "medium",
    }
    assert request["startedBy"] == "calliope-hub/hub-1"
    assert (request["enableECSManagedTags"], request["propagateTags"]) == (False, "NONE")
    # Nothing but the catalog decides what runs.
    assert not {"image", "taskRoleArn", "executionRoleArn"} & set(json.dumps(request).split('"'))


def test_client_token_is_stable_per_attempt_and_new_for_the_next(catalog: Catalog) -> None:
    choice = catalog.choose({})
    first, again, retry = identity_for(choice, 0), identity_for(choice, 0), identity_for(choice, 1)
    other_user = identity_for(choice, 0, user="bob")
    assert len(first.client_token) <= 64
    assert first.client_token == again.client_token
    assert len({first.client_token, retry.client_token, other_user.client_token}) == 3


def test_started_by_stays_in_ecs_alphabet_and_length(catalog: Catalog) -> None:
    identity = TaskIdentity(
        hub_id="prod hub.eu:1" + "x" * 200, user="u", server_name="", service="lab", size="small", attempt=0
    )
    assert identity.started_by.startswith("calliope-hub/prod-hub-eu-1x")
    assert len(identity.started_by) == 128
    assert set(identity.started_by) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/")
    with pytest.raises(ValueError, match="hub_id must not be empty"):
        TaskIdentity(hub_id="", user="u", server_name="", service="lab", size="small", attempt=0)
    with pytest.raises(ValueError, match="attempt must be"):
        TaskIdentity(hub_id="h", user="u", server_name="", service="lab", size="small", attempt=-1)


def test_services_with_their_own_entrypoint_get_no_command_and_local_uses_local_command(catalog: Catalog) -> None:
    chat = catalog.choose({"service": "chat"})
    request = run_task_request(chat, identity_for(chat), Placement(cluster="c"), {}, ["--ignored"])
    assert "command" not in request["overrides"]["containerOverrides"][0]
    assert "networkConfiguration" not in request  # no subnets: local ECS needs none
    lab = catalog.choose({})
    local = run_task_request(lab, identity_for(lab), Placement(cluster="c"), {}, ["--x"], local=True)
    assert local["overrides"]["containerOverrides"][0]["command"] == ["jupyterhub-singleuser", "--x"]


def test_launch_type_and_capacity_provider_strategy_exclude_each_other(catalog: Catalog) -> None:
    strategy = ({"capacityProvider": "FARGATE_SPOT", "weight": 1},)
    with pytest.raises(CatalogError, match="either launch_type or capacity_provider_strategy, not both"):
        Placement(cluster="c", capacity_provider_strategy=strategy)
    with pytest.raises(CatalogError, match="launch_type 'LAMBDA' is not one of"):
        Placement(cluster="c", launch_type="LAMBDA")
    with pytest.raises(CatalogError, match="needs a 'capacityProvider'"):
        Placement(cluster="c", launch_type=None, capacity_provider_strategy=({"weight": 1},))
    choice = catalog.choose({})
    request = run_task_request(
        choice, identity_for(choice), Placement(cluster="c", launch_type=None, capacity_provider_strategy=strategy), {}
    )
    assert "launchType" not in request
    assert request["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]


def test_run_task_request_refuses_inconsistent_or_oversized_input(catalog: Catalog) -> None:
    choice = catalog.choose({})
    wrong = TaskIdentity(hub_id="h", user="u", server_name="", service="chat", size="small", attempt=0)
    with pytest.raises(ValueError, match="the tags would lie"):
        run_task_request(choice, wrong, Placement(cluster="c"), {})
    with pytest.raises(TypeError, match="not one string"):
        run_task_request(choice, identity_for(choice), Placement(cluster="c"), {}, "--debug")
    with pytest.raises(CatalogError, match="ECS allows at most 8192"):
        run_task_request(choice, identity_for(choice), Placement(cluster="c"), {"BIG": "x" * 9000})


@given(st.text(max_size=21))  # 21 four-byte characters escape to 252 characters: never cut
def test_tag_values_read_back_exactly(value: str) -> None:
    assert decode_tag_value(encode_tag_value(value)) == value


@given(st.text(max_size=300))
def test_tag_values_stay_in_ecs_alphabet_and_length(value: str) -> None:
    encoded = encode_tag_value(value)
    assert len(encoded) <= 256
    assert all(ch.isalnum() or ch in " +-=.:/@_" for ch in encoded)


def test_long_tag_values_stay_distinct() -> None:
    a, b = "é" * 200 + "a", "é" * 200 + "b"
    assert encode_tag_value(a) != encode_tag_value(b)
    assert len(encode_tag_value(a)) <= 256


# --- the spawn form -----------------------------------------------------------------------------


class FormReader(HTMLParser):
    """The selects of an options form: {name: [(value, label, selected, group)]} and labels."""

    def __init__(self) -> None:
        super().__init__()
        self.selects: dict[str, list] = {}
        self.label_for: list[str] = []
        self.ids: dict[str, str] = {}
        self._select = self._group = None
        self._option = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select":
            self._select = attrs["name"]
            self.ids[attrs["name"]] = attrs["id"]
            self.selects[self._select] = []
        elif tag == "optgroup":
            self._group = attrs["data-service"]
        elif tag == "option":
            self._option = [attrs["value"], "", "selected" in attrs, self._group]
        elif tag == "label":
            self.label_for.append(attrs["for"])

    def handle_data(self, data):
        if self._option is not None:
            self._option[1] += data

    def handle_endtag(self, tag):
        if tag == "option":
            self.selects[self._select].append(tuple(self._option))
            self._option = None
        elif tag == "optgroup":
            self._group = None


def test_options_form_offers_each_service_and_its_sizes(catalog: Catalog) -> None:
    form = FormReader()
    form.feed(catalog.options_form())
    assert sorted(form.label_for) == sorted(form.ids.values())  # every select is labelled
    services = form.selects["service"]
    assert [value for value, *_ in services] == ["lab", "chat", "waiide"]
    assert [value for value, _, selected, _ in services if selected] == ["lab"]
    sizes = form.selects["size"]
    assert [value for value, _, selected, _ in sizes if selected] == ["lab/small"]
    offered = {(group, value.split("/")[1]) for value, _, _, group in sizes}
    assert offered == {(s.name, size) for s in catalog.services.values() for size in s.sizes}
    assert ("Small (1 vCPU, 2 GiB)", "lab") in {(label, group) for _, label, _, group in sizes}
    assert "http" not in catalog.options_form()  # no external assets

    for value, *_ in sizes:
        service = value.split("/")[0]
        options = catalog.options_from_form({"service": [service], "size": [value], "_xsrf": ["x"]})
        choice = catalog.choose(options)
        assert f"{choice.service.name}/{choice.size_name}" == value


def test_options_from_form_refuses_mismatch_and_keeps_crafted_fields_for_choose(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="the size 'lab/large' belongs to service 'lab', but service 'chat'"):
        catalog.options_from_form({"service": ["chat"], "size": ["lab/large"]})
    with pytest.raises(CatalogError, match="'service' must have exactly one value, got 2"):
        catalog.options_from_form({"service": ["chat", "lab"]})
    crafted = catalog.options_from_form({"service": ["lab"], "size": ["small"], "image": ["evil"]})
    assert crafted == {"service": "lab", "size": "small", "image": "evil"}
    with pytest.raises(CatalogError, match="option 'image' cannot be set"):
        catalog.choose(crafted)


def test_options_form_escapes_catalog_text(tmp_path: Path) -> None:
    directory = broken_catalog(tmp_path, _set("display_name", "<script>alert(1)</script>"))
    html = Catalog.load(directory).options_form()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


# --- a real RunTask against moto's ECS (tests/conftest.py's moto_ecs) ----------------------------


def aws_client(service: str, endpoint: str):
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.mark.parametrize("service", ["lab", "chat"])
def test_real_run_task_against_moto(catalog: Catalog, moto_ecs: str, service: str) -> None:
    ecs, ec2 = aws_client("ecs", moto_ecs), aws_client("ec2", moto_ecs)
    subnet = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"][0]
    cluster = f"catalog-{service}"
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(**catalog.task_definition(service, local=False))
    choice = catalog.choose({"service": service, "size": "medium"})
    identity = identity_for(choice, attempt=3, server="analysis")
    placement = Placement(cluster=cluster, subnets=(subnet["SubnetId"],))

    task = ecs.run_task(**run_task_request(choice, identity, placement, {"A": "1"}, ["--debug"]))["tasks"][0]
    (described,) = ecs.describe_tasks(cluster=cluster, tasks=[task["taskArn"]], include=["TAGS"])["tasks"]

    assert described["startedBy"] == "calliope-hub/hub-1"
    assert read_tags(described["tags"]) == {
        "hub": "hub-1",
        "user": "alice@example.org",
        "server": "analysis",
        "service": service,
        "size": "medium",
    }
    assert described["overrides"]["cpu"] == str(choice.size.cpu)
    assert described["overrides"]["memory"] == str(choice.size.memory)
    assert described["taskDefinitionArn"].split("/")[-1].startswith(choice.service.family + ":")
    listed = ecs.list_tasks(cluster=cluster, startedBy=identity.started_by)["taskArns"]
    assert task["taskArn"] in listed


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
