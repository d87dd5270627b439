"""Fixtures shared by the whole suite: local ECS in a thread, moto's ECS, and both at once.

Every AWS client in the tests talks to loopback only, with fake credentials, so nothing
can ever reach (or be billed by) real AWS.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import os
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from calliope_hub.localecs import LocalEcs, LocalEcsConfig

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/calliope-tests/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/calliope-tests/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}

#: local ECS as most tests want it: sim mode, any free port, no quotas, lifecycles in ~0.1 s.
FAST_LOCAL_ECS = LocalEcsConfig(
    port=0,
    mode="sim",
    throttle="off",
    sim_provisioning_s=0.02,
    sim_pending_s=0.05,
    sim_jitter=0.0,
)


#: The /16s the tests' task addresses come from: 127.1.0.0/16 to 127.15.0.0/16. Local ECS's own
#: default (localecs.config.random_cidr, what `up`, the benches and their stacks use) never picks
#: below 127.16, and the tests' fixed addresses are 127.0.x.x or above 127.20.
_TEST_BLOCKS = range(1, 16)
#: every local ECS of the session gets its own /24 of task addresses, so no two ever share one.
_subnets = itertools.count()
#: the /16s this session hands /24s out from, in order, and their lock files, held until the process exits
_blocks: list[int] = []
_locks: list[int] = []


def _claim_block() -> int:
    """A /16 no other pytest session on this machine holds (an flock on its lock file).

    Every engineer runs narrow tests on the one machine, and two sessions that counted from the
    same address handed the same task addresses to their local ECSs. The search starts at a block
    picked by the pid, so sessions rarely meet the same lock; with all of them held, the pid's
    block is shared rather than the run failing.
    """
    start = os.getpid() % len(_TEST_BLOCKS)
    for i in range(len(_TEST_BLOCKS)):
        block = _TEST_BLOCKS[(start + i) % len(_TEST_BLOCKS)]
        if block in _blocks:
            continue
        try:  # read-only: another user's lock file (0644 in /tmp) can still be locked
            lock = os.open(f"/tmp/calliope-tests-cidr-127.{block}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            continue
        _locks.append(lock)
        return block
    return _TEST_BLOCKS[start]


def fresh_cidr() -> str:
    """A /24 of task addresses that no other local ECS of this session, nor of another session now, has."""
    n = next(_subnets)
    while len(_blocks) <= n // 256:  # the first call, and every 256th: another /16
        _blocks.append(_claim_block())
    return f"127.{_blocks[n // 256]}.{n % 256}.0/24"


@pytest.fixture
def task_cidr() -> str:
    """Task addresses of this test's own, for a LocalEcs it starts itself."""
    return fresh_cidr()


@pytest.fixture(scope="session", autouse=True)
def fake_aws_credentials() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class LocalEcsHandle:
    """A LocalEcs running on its own event loop in a background thread, for sync tests."""

    def __init__(self, config: LocalEcsConfig):
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-ecs", daemon=True)
        self._thread.start()
        self.server = LocalEcs(config)
        try:
            self.endpoint_url: str = self.call(self.server.start())
        except BaseException:
            self._halt_loop()
            raise
        self._stopped = False

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        """Run a coroutine on local ECS's loop (e.g. to look at its control plane safely)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A /_localecs/ call: (HTTP status, decoded JSON)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint_url + path, data=data, method=method)
        context = ssl._create_unverified_context() if self.endpoint_url.startswith("https") else None
        try:
            with urllib.request.urlopen(req, timeout=10, context=context) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def stats(self) -> dict:
        return self.request("GET", "/_localecs/stats")[1]

    def kill(self, task_id: str, exit_code: int = 137) -> tuple[int, Any]:
        return self.request("POST", f"/_localecs/tasks/{task_id}/kill", {"exitCode": exit_code})

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.server.stop())
        finally:
            self._halt_loop()

    def _halt_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


@pytest.fixture
def local_ecs_factory() -> Iterator[Callable[..., LocalEcsHandle]]:
    """`make(**fields)`: a started local ECS; fields override FAST_LOCAL_ECS. All stop at teardown."""
    handles: list[LocalEcsHandle] = []

    def make(**fields: Any) -> LocalEcsHandle:
        handle = LocalEcsHandle(replace(FAST_LOCAL_ECS, **{"cidr": fresh_cidr(), **fields}))
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def local_ecs(local_ecs_factory: Callable[..., LocalEcsHandle]) -> LocalEcsHandle:
    """Local ECS in sim mode with quotas off and fast lifecycles."""
    return local_ecs_factory()


@pytest.fixture(scope="session")
def moto_ecs(fake_aws_credentials: None) -> Iterator[str]:
    """moto's ThreadedMotoServer on a free loopback port: its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(params=["local-ecs", "moto"])
def ecs_endpoint(request: pytest.FixtureRequest) -> str:
    """The endpoint of each ECS implementation in turn, for contract suites.

    A test marked `local_ecs_only(reason=...)` relies on real ECS behaviour moto lacks;
    it is skipped for moto, with that reason.
    """
    if request.param == "moto":
        marker = request.node.get_closest_marker("local_ecs_only")
        if marker is not None:
            pytest.skip(f"moto: {marker.kwargs.get('reason') or (marker.args or ['not implemented'])[0]}")
        return request.getfixturevalue("moto_ecs")
    return request.getfixturevalue("local_ecs").endpoint_url
