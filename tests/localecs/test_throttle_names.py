"""`--throttle` names for the SSM buckets, so a test or bench can model Parameter Store's higher throughput.

AWS_QUOTAS puts PutParameter at the standard 3 per second; an account with higher throughput turned
on gets 10 (ecsfacts cites both). `ssm-put=10:10` is how local ECS plays that account.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from calliope_hub.ecsfacts import AWS_QUOTAS, Quota
from calliope_hub.localecs.config import parse_throttle


def test_ssm_names_override_only_their_own_bucket() -> None:
    quotas = parse_throttle("ssm-put=10:10,ssm-delete=5:2")
    assert quotas is not None
    assert (quotas["ssm-put-parameter"], quotas["ssm-delete-parameter"]) == (Quota(10, 10), Quota(5, 2))
    assert {name: quota for name, quota in quotas.items() if not name.startswith("ssm-")} == {
        name: quota for name, quota in AWS_QUOTAS.items() if not name.startswith("ssm-")
    }
    with pytest.raises(ValueError, match="ssm-put, ssm-delete"):
        parse_throttle("ssm=1:1")


def test_a_put_parameter_past_its_burst_is_throttled_as_ssm_does(local_ecs_factory) -> None:
    local = local_ecs_factory(throttle="ssm-put=2:0.01")
    ssm = boto3.client(
        "ssm",
        endpoint_url=local.endpoint_url,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}),
    )
    for n in range(2):
        ssm.put_parameter(Name=f"/t/p{n}", Value="v", Type="SecureString")
    with pytest.raises(ClientError) as throttled:
        ssm.put_parameter(Name="/t/p2", Value="v", Type="SecureString")
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    ssm.delete_parameters(Names=["/t/p0", "/t/p1"])  # its own bucket: deletes still go through
    assert local.stats()["calls"]["PutParameter"] == {"ok": 2, "throttled": 1, "error": 0}
