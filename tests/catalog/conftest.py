"""What the catalog's tests share: the built-in catalog, and copies of it with lab.yaml edited."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from calliope_hub.catalog import BUILTIN_DIRECTORY, Catalog


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def broken_catalog(tmp_path: Path, edit) -> Path:
    """A copy of the built-in catalog whose lab.yaml went through `edit`."""
    directory = tmp_path / "services"
    shutil.copytree(BUILTIN_DIRECTORY, directory)
    lab = directory / "lab.yaml"
    data = yaml.safe_load(lab.read_text())
    edited = edit(data)
    lab.write_text(edited if isinstance(edited, str) else yaml.safe_dump(data, sort_keys=False))
    return directory


def set_key(path: str, value):
    """An edit for broken_catalog: the dotted key `path` of lab.yaml set to `value`."""

    def edit(data):
        *parents, last = path.split(".")
        target = data
        for part in parents:
            target = target[part]
        target[last] = value

    return edit
