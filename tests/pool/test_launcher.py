"""The launcher as a real process: one valid claim execs the server with the handed-over environment.

The "server" here is a small Python program that records its argv and environment and then
serves one request on the launcher's own port, which proves the launcher let the port go.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from calliope_hub.pool.launcher import CLAIM_PATH, STATUS_PATH
from calliope_hub.pool.secret import KEY_VARIABLE, NONCE_VARIABLE, claim_secret

KEY, NONCE = "k" * 64, "n" * 32
SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
json.dump({"argv": sys.argv, "env": dict(os.environ)}, open(os.environ["RECORD"], "w"))
class Answer(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "6"); self.end_headers()
        self.wfile.write(b"server")
HTTPServer((os.environ["BIND"], int(os.environ["PORT"])), Answer).handle_request()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Launcher:
    def __init__(self, tmp: Path, *, entry: str = "", extra_env: dict[str, str] | None = None):
        self.port, self.bind = free_port(), "127.0.0.1"
        self.record = tmp / "record.json"
        env = {"PATH": os.environ["PATH"], KEY_VARIABLE: KEY, NONCE_VARIABLE: NONCE, "KEPT": "from the task"}
        argv = [sys.executable, "-m", "calliope_hub.pool.launcher", "--bind", self.bind, "--port", str(self.port)]
        command = ["--entry", entry, "--", "warm-server"] if entry else ["--", sys.executable, "-c", SERVER]
        self.process = subprocess.Popen([*argv, *command], env={**env, **(extra_env or {})})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while self.status() is None:
            assert time.monotonic() < deadline, "the launcher never listened"
            time.sleep(0.05)

    def status(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.url + STATUS_PATH, timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:
            return None

    def claim(self, body: object, secret: str = claim_secret(KEY, NONCE)) -> tuple[int, dict]:
        data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + CLAIM_PATH, data=data, method="POST")
        request.add_header("Authorization", f"Bearer {secret}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    yield started
    started.process.kill()
    started.process.wait(10)


def claim_body(launcher: Launcher) -> dict:
    environment = {
        "JUPYTERHUB_API_TOKEN": "the-users-token",
        "RECORD": str(launcher.record),
        "BIND": "0.0.0.0",
        "PORT": str(launcher.port),
    }
    return {"environment": environment, "args": ["--listen=0.0.0.0", "--allow-root"]}


def test_a_valid_claim_execs_the_server_with_the_users_environment(launcher: Launcher) -> None:
    assert launcher.status() == {"state": "waiting"}
    assert launcher.claim(claim_body(launcher)) == (200, {"state": "claimed"})
    deadline = time.monotonic() + 20
    while not launcher.record.exists():
        assert time.monotonic() < deadline, "the server never started"
        time.sleep(0.05)
    time.sleep(0.2)  # the record is written before the server binds; give it the port
    record = json.loads(launcher.record.read_text())
    env = record["env"]
    assert env["JUPYTERHUB_API_TOKEN"] == "the-users-token"
    assert env["KEPT"] == "from the task", "the task's own environment stays"
    assert KEY_VARIABLE not in env and NONCE_VARIABLE not in env, "the pool's secrets do not reach the user"
    assert env["BIND"] == "127.0.0.1", "0.0.0.0 becomes the address the launcher bound"
    assert record["argv"][-2:] == ["--listen=127.0.0.1", "--allow-root"]
    assert launcher.process.poll() is None, "exec: the launcher process became the server"
    with urllib.request.urlopen(launcher.url + "/anything", timeout=5) as answer:
        assert answer.read() == b"server", "the server took over the launcher's port"


def test_a_wrong_secret_is_refused_and_changes_nothing(launcher: Launcher) -> None:
    body = claim_body(launcher)
    assert launcher.claim(body, secret=claim_secret(KEY, "another task's nonce"))[0] == 403
    assert launcher.claim(body, secret="")[0] == 403
    assert launcher.status() == {"state": "waiting"}
    assert not launcher.record.exists()
    assert launcher.claim(body)[0] == 200, "the hub's claim still works afterwards"


@pytest.mark.parametrize(
    "body",
    [
        ["not", "an", "object"],
        {"environment": {"A=B": "x"}},
        {"environment": {"A": 1}},
        {"args": "one string"},
        {"environment": {}, "command": ["sh"]},
    ],
)
def test_a_malformed_claim_is_refused_and_the_task_keeps_waiting(launcher: Launcher, body: object) -> None:
    status, answer = launcher.claim(body)
    assert status == 400 and answer["error"]
    assert launcher.status() == {"state": "waiting"}


def test_without_its_key_the_launcher_refuses_to_start(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "calliope_hub.pool.launcher", "--port", str(free_port()), "--", "true"]
    done = subprocess.run(argv, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and KEY_VARIABLE in done.stderr


ENTRY_MODULE = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
IMPORTED_WITH_TOKEN = "JUPYTERHUB_API_TOKEN" in os.environ
open(os.environ["IMPORTED"], "w").write(str(os.getpid()))
def main():
    json.dump({"argv": sys.argv, "env": dict(os.environ), "pid": os.getpid(), "token_at_import": IMPORTED_WITH_TOKEN},
              open(os.environ["RECORD"], "w"))
    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "6"); self.end_headers()
            self.wfile.write(b"server")
    HTTPServer((os.environ["BIND"], int(os.environ["PORT"])), Answer).handle_request()
"""


def test_with_an_entry_point_the_server_is_imported_before_the_claim_and_run_in_place(tmp_path: Path) -> None:
    (tmp_path / "warmserver.py").write_text(ENTRY_MODULE)
    imported = tmp_path / "imported"
    extra = {"PYTHONPATH": str(tmp_path), "IMPORTED": str(imported)}
    launcher = Launcher(tmp_path, entry="warmserver:main", extra_env=extra)
    try:
        assert imported.read_text() == str(launcher.process.pid), "the module was imported while the task waited"
        environ = Path(f"/proc/{launcher.process.pid}/environ").read_bytes()
        assert KEY.encode() not in environ, "the serving process never had the key in its environment block"
        assert launcher.claim(claim_body(launcher))[0] == 200
        deadline = time.monotonic() + 20
        while not launcher.record.exists():
            assert time.monotonic() < deadline, "the entry point never ran"
            time.sleep(0.05)
        time.sleep(0.2)
        ran = json.loads(launcher.record.read_text())
        assert ran["pid"] == launcher.process.pid, "run in place, not exec'd"
        assert ran["argv"] == ["warm-server", "--listen=127.0.0.1", "--allow-root"]
        assert ran["env"]["JUPYTERHUB_API_TOKEN"] == "the-users-token" and KEY_VARIABLE not in ran["env"]
        assert ran["token_at_import"] is False, "imports ran before any user's environment existed"
        with urllib.request.urlopen(launcher.url + "/anything", timeout=5) as answer:
            assert answer.read() == b"server"
    finally:
        launcher.process.kill()
        launcher.process.wait(10)
