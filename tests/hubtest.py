"""Helpers shared by the tests that drive a real hub: one copy of each, imported as
`tests.hubtest` (the project root is on pytest's path)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from calliope_hub.catalog import BUILTIN_DIRECTORY
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubproc import ProxyNotInstalled, proxy_command

T = TypeVar("T")


def builtin_catalog_with(directory: Path, file: str, old: str, new: str) -> Path:
    """A copy of the built-in catalog in `directory`, with `old` in `file` (e.g. lab.yaml) made `new`.

    `old` must be there: a test whose edit silently missed would test the built-in catalog.
    """
    shutil.copytree(BUILTIN_DIRECTORY, directory)
    path = directory / file
    text = path.read_text()
    assert old in text, f"{old!r} is no longer in the built-in {file}"
    path.write_text(text.replace(old, new))
    return directory


def require_proxy() -> None:
    """Skip without configurable-http-proxy, except on CI (CI=true), where that is a failure."""
    try:
        proxy_command()
    except ProxyNotInstalled as missing:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(missing))


async def eventually(check: Callable[[], Awaitable[T]], seconds: float = 20.0, what: str = "") -> T:
    """The first truthy answer of `check`, polled every 0.1 s for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what or 'true'} within {seconds}s")
        await asyncio.sleep(0.1)


async def server_model(api: HubApi, user: str) -> dict[str, Any] | None:
    """The user's default server as the hub's REST API shows it (None: no server)."""
    return (await api.request("GET", f"/users/{user}")).json()["servers"].get("")


async def server_ready(api: HubApi, user: str) -> dict[str, Any] | None:
    """The server model once it is ready (else None)."""
    model = await server_model(api, user)
    return model if model and model["ready"] else None


async def server_gone(api: HubApi, user: str) -> bool:
    return await server_model(api, user) is None
