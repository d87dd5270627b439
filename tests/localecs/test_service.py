"""Embedding LocalEcs: https with its own certificate, and nothing left listening after stop()."""

from __future__ import annotations

import socket
import time

import boto3


def test_tls_endpoint_works_with_the_printed_certificate(local_ecs_factory, tmp_path):
    handle = local_ecs_factory(tls=True, tls_dir=tmp_path)
    assert handle.endpoint_url.startswith("https://")
    certificate = handle.server.certificate
    assert certificate is not None and certificate.parent == tmp_path
    ecs = boto3.client("ecs", endpoint_url=handle.endpoint_url, verify=str(certificate))
    assert ecs.describe_clusters()["clusters"][0]["clusterName"] == "default"


def test_stop_closes_the_endpoint_and_every_task_socket(local_ecs):
    ecs = boto3.client("ecs", endpoint_url=local_ecs.endpoint_url)
    ecs.register_task_definition(
        family="web", containerDefinitions=[{"name": "web", "image": "web", "portMappings": [{"containerPort": 8080}]}]
    )
    arn = ecs.run_task(taskDefinition="web")["tasks"][0]["taskArn"]
    for _ in range(500):
        task = ecs.describe_tasks(tasks=[arn])["tasks"][0]
        if task["lastStatus"] == "RUNNING":
            break
        time.sleep(0.01)
    ip = task["containers"][0]["networkInterfaces"][0]["privateIpv4Address"]
    socket.create_connection((ip, 8080), timeout=2).close()
    host, port = local_ecs.endpoint_url.removeprefix("http://").split(":")
    local_ecs.stop()
    for address in ((ip, 8080), (host, int(port))):
        try:
            socket.create_connection(address, timeout=2).close()
            raise AssertionError(f"{address} still answers after stop()")
        except ConnectionRefusedError:
            pass
