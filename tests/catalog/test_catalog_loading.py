"""Loading the catalog: the built-in services, and a bad file refused at hub start with one error
naming file, line and field.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from calliope_hub.catalog import BUILTIN_DIRECTORY, Catalog, CatalogConfigError, CatalogError, load_catalog
from tests.catalog.conftest import broken_catalog, set_key

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
        set_key("sizes.small.memory", 512),
        ("sizes", "small"),
        "sizes.small: cpu 1024 with memory 512 is not a valid Fargate pair; "
        "for cpu 1024 memory must be 2048 to 8192 MiB in steps of 1024",
    ),
    "cpu Fargate lacks": (
        set_key("sizes.small.cpu", 300),
        ("sizes", "small"),
        "cpu 300 is not a Fargate cpu value; allowed: 256, 512",
    ),
    "memory as text": (
        set_key("sizes.small.memory", "2048"),
        ("sizes", "small", "memory"),
        "sizes.small.memory: Input should be a valid integer",
    ),
    "unknown top-level key": (
        set_key("cpu", 4096),
        ("cpu",),
        "cpu: unknown key 'cpu' (allowed here: name, display_name",
    ),
    "unknown nested key": (
        set_key("health_check.intervall", 10),
        ("health_check", "intervall"),
        "health_check.intervall: unknown key 'intervall' (allowed here: command, interval, timeout",
    ),
    "unknown size key": (
        set_key("sizes.small.gpu", 1),
        ("sizes", "small", "gpu"),
        "sizes.small.gpu: unknown key 'gpu' (allowed here: cpu, memory",
    ),
    "missing image": (_drop("image"), (), "image: required key is missing"),
    "empty image": (set_key("image", ""), ("image",), "image: String should have at least 1 character"),
    "default size not offered": (
        set_key("default_size", "huge"),
        ("default_size",),
        "default_size: 'huge' is not one of its sizes (small, medium, large)",
    ),
    "health check out of ECS range": (
        set_key("health_check.interval", 1),
        ("health_check", "interval"),
        "health_check.interval: Input should be greater",
    ),
    "health check not CMD": (
        set_key("health_check.command", ["curl", "x"]),
        ("health_check", "command"),
        "health_check.command: must start with CMD or CMD-SHELL",
    ),
    "size name with a slash": (
        set_key("sizes.big/one", {"cpu": 256, "memory": 512}),
        ("sizes",),
        "sizes: size name 'big/one' must be",
    ),
    "name not the file name": (set_key("name", "chat"), ("name",), "name: 'chat' must match the file name 'lab'"),
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
    directory = broken_catalog(tmp_path, set_key("sizes.small.memory", 512))
    with pytest.raises(CatalogConfigError) as caught:
        load_catalog(str(directory))
    assert not isinstance(caught.value, CatalogError)
