"""`calliope-hub local-ecs` as a user runs it: prints how to connect, serves, stops on SIGTERM."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import subprocess
import sys
import time

import boto3

from calliope_hub.cli import main


def test_serves_until_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "calliope_hub.cli", "local-ecs", "--port", "0", "--sim-pending", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = process.stdout.readline()
        endpoint = re.search(r"http://127\.0\.0\.1:\d+", first).group(0)
        assert process.stdout.readline().startswith("Use it from Python:")
        snippet = "".join(process.stdout.readline() for _ in range(4))
        assert 'boto3.client("ecs"' in snippet and endpoint in snippet
        ecs = boto3.client("ecs", endpoint_url=endpoint)
        assert ecs.describe_clusters()["clusters"][0]["clusterName"] == "default"
        ecs.create_cluster(clusterName="calliope")  # as the hub does at start
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(snippet, {})  # the banner's snippet, run as a user would paste it
        assert "'taskArns': []" in printed.getvalue() and 'cluster="calliope"' in snippet
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert "stopping local ECS" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bad_flags_are_a_clear_error(capsys):
    assert main(["local-ecs", "--throttle", "fast"]) == 2
    assert "bad throttle 'fast'" in capsys.readouterr().err
    assert main(["local-ecs", "--cidr", "10.0.0.0/8"]) == 2
    assert "127.0.0.0/8" in capsys.readouterr().err


def test_port_in_use_is_a_clear_error(local_ecs, capsys):
    port = local_ecs.endpoint_url.rsplit(":", 1)[-1]
    started = time.monotonic()
    assert main(["local-ecs", "--port", port]) == 1
    assert "cannot listen" in capsys.readouterr().err and time.monotonic() - started < 10
