"""The launcher a warm task runs: wait for one valid claim, then become the user's server.

    python -m calliope_hub.pool.launcher --bind 0.0.0.0 --port 8888 -- jupyterhub-singleuser

It listens on the service's own port (the one the hub already reaches), so a pool needs no
other opening in the security groups. Two routes:

- `GET /_calliope_pool/status` answers `{"state": "waiting"}`: the keeper's readiness probe.
  Every other GET answers the same, so the service's health check passes while the task
  waits. It says nothing about the task's secret or owner.
- `POST /_calliope_pool/claim` with `Authorization: Bearer <claim secret>` and a JSON body
  `{"environment": {...}, "args": [...]}`. A wrong or missing secret is a 403 and changes
  nothing: the task keeps waiting for the hub. A valid claim is answered 200, the socket is
  closed, and the process execs `command + args` with its own environment (minus the pool
  key and nonce) updated by the claim's. The server then binds the same port.

Requests are served one at a time, so two claims can never both succeed: the first valid one
ends the loop before the next is read. Standard library only, so an image needs nothing but
Python and this package (or these two files) to be pooled.

`--entry MODULE:FUNCTION` (optional) imports MODULE while the task waits and, once claimed,
calls FUNCTION with `sys.argv` and `os.environ` set as the server's, in this same process,
instead of exec'ing `command` (which then only names argv[0]). For a Python server whose start
is mostly imports (jupyterhub-singleuser: `jupyterhub.singleuser:main`, ~3.5 s of imports here)
that cost is paid before the user arrives. A module that reads the environment at import time
sees the task's own environment, not the claim's.

`--bind` is the address the task's server binds. On ECS (awsvpc) it is 0.0.0.0, the task's
own interface; local ECS's process mode rewrites 0.0.0.0 in argv to the task's loopback
address, and the launcher applies the same rewrite to what the claim hands over, so the
server binds where the launcher did.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from .secret import AUTH_SCHEME, KEY_VARIABLE, NONCE_VARIABLE, secret_matches

STATUS_PATH = "/_calliope_pool/status"
CLAIM_PATH = "/_calliope_pool/claim"
#: a claim is an environment and a few args; anything larger is not one
MAX_BODY = 256 * 1024
#: seconds a connection may take to send its request, so one slow client cannot hold the task
REQUEST_TIMEOUT = 10.0
_ALL_INTERFACES = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])")


class ClaimRefused(ValueError):
    """A claim that is not one: the HTTP status and why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Claim:
    """What a valid claim hands over."""

    environment: dict[str, str]
    args: list[str]


def parse_claim(body: bytes) -> Claim:
    """The claim's body, checked: string names and values without NUL, names without '='."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClaimRefused(400, f"the body is not JSON: {e}") from None
    if not isinstance(data, dict) or set(data) - {"environment", "args"}:
        raise ClaimRefused(400, 'the body must be {"environment": {...}, "args": [...]}')
    environment, args = data.get("environment", {}), data.get("args", [])
    if not isinstance(environment, dict) or not isinstance(args, list):
        raise ClaimRefused(400, "environment must be an object and args a list")
    for name, value in environment.items():
        if not name or "=" in name or "\0" in name or not isinstance(value, str) or "\0" in value:
            raise ClaimRefused(400, f"environment variable {name!r} is not a NAME=string pair")
    if not all(isinstance(arg, str) and "\0" not in arg for arg in args):
        raise ClaimRefused(400, "args must be strings")
    return Claim(environment=dict(environment), args=list(args))


def server_environment(own: Mapping[str, str], claim: Claim, bind: str) -> dict[str, str]:
    """The server's environment: the task's own without the pool's secrets, then the claim's."""
    handed = {name: _bind(value, bind) for name, value in claim.environment.items()}
    kept = {name: value for name, value in own.items() if name not in (KEY_VARIABLE, NONCE_VARIABLE)}
    return {**kept, **handed}


def server_argv(command: Sequence[str], claim: Claim, bind: str) -> list[str]:
    return [*command, *(_bind(arg, bind) for arg in claim.args)]


def _bind(value: str, bind: str) -> str:
    return value if bind == "0.0.0.0" else _ALL_INTERFACES.sub(bind, value)


class LauncherServer(HTTPServer):
    """One request at a time; `claimed` is set by the first valid claim, which ends the loop."""

    def __init__(self, address: tuple[str, int], key: str, nonce: str):
        super().__init__(address, _Handler)
        self.key, self.nonce = key, nonce
        self.claimed: Claim | None = None


class _Handler(BaseHTTPRequestHandler):
    server: LauncherServer
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        # Every path: the service's own health check (e.g. GET /api) must pass while the task waits.
        self._answer(200, {"state": "waiting"})

    def do_POST(self) -> None:
        if self.path != CLAIM_PATH:
            self._answer(404, {"error": "not found"})
            return
        try:
            claim = self._read_claim()
        except ClaimRefused as refused:
            self._answer(refused.status, {"error": str(refused)})
            return
        self.server.claimed = claim
        self._answer(200, {"state": "claimed"})
        self.close_connection = True

    def _read_claim(self) -> Claim:
        """Authenticate first, then read the body: a stranger's body is never parsed."""
        scheme, _, presented = (self.headers.get("Authorization") or "").partition(" ")
        if scheme != AUTH_SCHEME or not secret_matches(self.server.key, self.server.nonce, presented.strip()):
            raise ClaimRefused(403, "wrong claim secret")
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            raise ClaimRefused(411, "a claim needs a Content-Length") from None
        if not 0 < length <= MAX_BODY:
            raise ClaimRefused(413, f"a claim body has 1 to {MAX_BODY} bytes")
        return parse_claim(self.rfile.read(length))

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"calliope pool launcher: {self.address_string()} {format % args}\n")


def wait_for_claim(bind: str, port: int, key: str, nonce: str) -> Claim:
    """Serve until a valid claim arrives; the listening socket is closed when this returns."""
    server = LauncherServer((bind, port), key, nonce)
    try:
        while server.claimed is None:
            server.handle_request()
        return server.claimed
    finally:
        server.server_close()


def load_entry(entry: str) -> Callable[[], Any]:
    """MODULE:FUNCTION, imported now: the server's imports happen before the claim."""
    module, colon, function = entry.partition(":")
    if not colon or not module or not function:
        raise ValueError(f"--entry {entry!r}: write MODULE:FUNCTION, e.g. jupyterhub.singleuser:main")
    found: Callable[[], Any] = getattr(importlib.import_module(module), function)
    return found


def become(function: Callable[[], Any], argv: list[str], environment: dict[str, str]) -> int:
    """Run the server in this process, as if exec'd with `argv` and `environment`."""
    os.environ.clear()
    os.environ.update(environment)
    sys.argv = argv
    answer = function()
    return answer if isinstance(answer, int) else 0


def without_key_in_environ(argv: list[str], key: str) -> None:
    """Exec this launcher again with the pool key on a pipe instead of in the environment.

    With an entry point the launcher's process becomes the user's server, and Linux keeps a
    process's original environment block readable at /proc/<pid>/environ by the same Unix user
    whatever the process later unsets: the user's own code would find the key there. Only the
    environment of the exec that started the process is kept, so the serving process is started
    without it and reads the key from a pipe once.
    """
    read_end, write_end = os.pipe()
    os.write(write_end, key.encode())  # 64 bytes: far below a pipe's buffer, never blocks
    os.close(write_end)
    os.set_inheritable(read_end, True)
    environment = {name: value for name, value in os.environ.items() if name != KEY_VARIABLE}
    launcher = [sys.executable, "-m", "calliope_hub.pool.launcher", "--key-fd", str(read_end), *argv]
    os.execve(sys.executable, launcher, environment)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m calliope_hub.pool.launcher", description=__doc__.split("\n")[0])
    parser.add_argument("--bind", default="0.0.0.0", help="the address the server binds (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, required=True, help="the service's port")
    parser.add_argument("--entry", default="", help="MODULE:FUNCTION to import now and call after the claim")
    parser.add_argument("--key-fd", type=int, default=-1, help=argparse.SUPPRESS)  # set by the launcher itself
    parser.add_argument("command", nargs="+", help="the server's command, after --")
    options = parser.parse_args(arguments)
    key, nonce = os.environ.get(KEY_VARIABLE, ""), os.environ.get(NONCE_VARIABLE, "")
    if options.key_fd >= 0:
        key = os.read(options.key_fd, 4096).decode()
        os.close(options.key_fd)
    if not key or not nonce:
        print(f"calliope pool launcher: {KEY_VARIABLE} and {NONCE_VARIABLE} must be set", file=sys.stderr)
        return 2
    if options.entry and KEY_VARIABLE in os.environ:
        without_key_in_environ(arguments, key)  # does not return
    entry = load_entry(options.entry) if options.entry else None
    claim = wait_for_claim(options.bind, options.port, key, nonce)
    del key  # the server that follows has no use for it
    argv_out = server_argv(options.command, claim, options.bind)
    environment = server_environment(os.environ, claim, options.bind)
    if entry is not None:
        print(f"calliope pool launcher: claimed; running {options.entry}", file=sys.stderr, flush=True)
        return become(entry, argv_out, environment)
    print(f"calliope pool launcher: claimed; exec {argv_out[0]}", file=sys.stderr, flush=True)
    try:
        os.execvpe(argv_out[0], argv_out, environment)
    except OSError as e:
        print(f"calliope pool launcher: cannot exec {argv_out[0]}: {e}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
