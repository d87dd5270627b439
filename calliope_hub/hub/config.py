"""Every `c.*` setting of Calliope Hub, and the one place they become plain typed objects.

traitlets lives here and nowhere below: `Enum`, `min` and `max` check values as the config
file loads (and `jupyterhub --help-all` lists them), and `RuntimeSettings.from_config` turns
them into a frozen dataclass the HubRuntime builds from. Nothing under ecs/ or events/ sees
a Configurable.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.session import Session as BotocoreSession
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url
from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode, validate
from traitlets.config import Config, Configurable

from calliope_hub.ecs.api import EcsTarget
from calliope_hub.ecs.launch import LaunchSettings
from calliope_hub.ecs.orphans import ACTIONS
from calliope_hub.ecs.secrets import JUPYTERHUB_SECRET_ENV
from calliope_hub.ecs.taskdefs import uses_local_commands
from calliope_hub.events.wire import DEFAULT_HEADER

#: a commercial, GovCloud or China Region name (us-east-1, us-gov-west-1, cn-north-1, ap-southeast-2...)
_REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}")
#: CloudWatch: namespaces of 1-255 of these characters.
#: SSM parameter hierarchy: '/' then levels of letters, digits, '.', '-', '_'.
_PARAMETER_ROOT = re.compile(r"(/[A-Za-z0-9._-]+){1,8}")
#: ECSSpawner.subnets' default: the one subnet local ECS invents, never a real VPC's
LOCAL_SUBNET = "subnet-local"
_NAMESPACE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_/#: ")


if TYPE_CHECKING:
    from calliope_hub.spawner import ECSSpawner


class ECSSpawnerConfig(Configurable):
    """`c.ECSSpawner.*`: where tasks run and how the spawner waits; ECSSpawner(ECSSpawnerConfig, Spawner) acts.

    A mixin, not a Spawner subclass: JupyterHub refuses a Spawner class without start/stop/poll.
    """

    cluster = Unicode("calliope", help="ECS cluster the tasks run in.").tag(config=True)
    region = Unicode("us-east-1", help="AWS Region of the cluster, e.g. us-east-1.").tag(config=True)
    endpoint_url = Unicode(
        "http://127.0.0.1:9400", help="ECS endpoint. The default is local ECS; set '' to use AWS's own endpoint."
    ).tag(config=True)
    aws_profile = Unicode("", help="AWS profile for credentials ('' = the default chain).").tag(config=True)
    subnets = List(
        Unicode(), default_value=[LOCAL_SUBNET], help="awsvpc subnets; the default works only with local ECS."
    ).tag(config=True)
    security_groups = List(Unicode(), help="awsvpc security groups.").tag(config=True)
    assign_public_ip = Bool(False, help="Give tasks a public IP (Fargate in public subnets).").tag(config=True)
    launch_type = Enum(
        ["FARGATE", "EC2"],
        default_value="FARGATE",
        allow_none=True,
        help="FARGATE or EC2; ignored when capacity_provider_strategy is set.",
    ).tag(config=True)
    capacity_provider_strategy = List(Dict(), help="ECS capacityProviderStrategy; excludes launch_type.").tag(
        config=True
    )
    catalog_path = Unicode("", help="Directory of service YAML files ('' = built-in).").tag(config=True)
    hub_id = Unicode(
        "calliope", help="Names this hub in task tags and startedBy, so a restarted hub finds its tasks."
    ).tag(config=True)
    stop_wait_timeout = Float(
        60.0,
        min=1.0,
        help="Seconds stop() waits for STOPPED before it sends StopTask again. A stop ends only when ECS "
        "says STOPPED (or no longer knows the task): until then the hub keeps the server and its token.",
    ).tag(config=True)
    restore_timeout = Float(
        8.0,
        min=0.0,
        help="Seconds poll() waits for the first status of a task adopted after a hub restart. "
        "Past it the server is reported running: unknown is not stopped.",
    ).tag(config=True)
    execution_role_arn = Unicode(
        "", help="Task execution role: pulls the image and reads the server's SSM parameters (ssm:GetParameters)."
    ).tag(config=True)
    task_role_arn = Unicode("", help="Task role: what code in a user's server may call on AWS ('' = nothing).").tag(
        config=True
    )
    task_commands = Enum(
        ["auto", "image", "local"],
        default_value="auto",
        help="Which command task definitions carry: the image's ('image'), the catalog's local stand-in for "
        "local ECS process mode ('local'), or 'local' exactly when endpoint_url is a loopback address ('auto').",
    ).tag(config=True)
    secret_parameter_root = Unicode(
        "/calliope",
        help="SSM Parameter Store path under which each server's token is kept, as <root>/<hub_id>/<user>/<server>.",
    ).tag(config=True)
    secret_environment = List(
        Unicode(),
        help="More environment variable names (from Spawner.environment) that go through the secret store, "
        "besides JUPYTERHUB_API_TOKEN and JPY_API_TOKEN.",
    ).tag(config=True)
    ssm_endpoint_url = Unicode(
        None, allow_none=True, help="SSM endpoint (None = the same as endpoint_url; '' = AWS's own)."
    ).tag(config=True)
    ssm_kms_key_id = Unicode("", help="KMS key for the SecureString parameters ('' = SSM's alias/aws/ssm).").tag(
        config=True
    )
    ssm_higher_throughput = Bool(
        False,
        help="The account has Parameter Store's higher throughput on in this Region: the hub then writes tokens at "
        "up to 8/s instead of 2.4/s (PutParameter: 10 TPS instead of 3, as AWS Support states it; every spawn "
        "writes one).",
    ).tag(config=True)

    @validate("secret_parameter_root")
    def _validate_secret_root(self, proposal: dict[str, Any]) -> str:
        """SSM's name rules, checked at config load rather than at the first spawn."""
        value: str = proposal["value"]
        if not _PARAMETER_ROOT.fullmatch(value) or value.lower().startswith(("/aws", "/ssm")):
            raise ValueError(
                "ECSSpawner.secret_parameter_root must start with '/' and hold only letters, digits, '.', '-', '_' "
                f"and '/' (not beginning with /aws or /ssm), not {value!r}"
            )
        return value


class CalliopeEvents(Configurable):
    """`c.CalliopeEvents.*`: event-driven task state (endpoint auth, queue, SQS) and the sweep cadence."""

    enabled = Bool(
        False, help="Events are delivered (EventBridge, SQS or the monitor): slow the sweep to a reconcile."
    ).tag(config=True)
    secret = Unicode("", help="Shared secret senders put in `header_name` ('' = only scoped tokens).").tag(config=True)
    header_name = Unicode(DEFAULT_HEADER, help="Header that carries the shared secret.").tag(config=True)
    queue_size = Integer(
        10_000, min=1, help="Events waiting to be applied (HTTP and SQS); past it the endpoint answers 503."
    ).tag(config=True)
    reconcile_interval = Float(
        300.0, min=0.1, help="Seconds between full sweeps while events flow (they can be lost)."
    ).tag(config=True)
    sweeps = Enum(
        ["hub", "off"],
        default_value="hub",
        help="'hub': this hub sweeps; 'off': no sweeps (`calliope-hub monitor` does them).",
    ).tag(config=True)
    confirm_window = Float(
        0.15, min=0.0, max=5.0, help="Seconds STOPPED events are collected before one DescribeTasks confirms them."
    ).tag(config=True)
    sqs_queue_url = Unicode("", help="SQS queue EventBridge delivers task state changes to ('' = none).").tag(
        config=True
    )
    sqs_endpoint_url = Unicode("", help="SQS endpoint ('' = AWS's own for the spawner's region).").tag(config=True)
    sqs_max_receives = Integer(5, min=1, help="Deliveries after which a failing SQS message is dropped.").tag(
        config=True
    )


class OrphanSweep(Configurable):
    """`c.OrphanSweep.*`: how the hub treats tasks with its startedBy that no spawner owns."""

    interval = Float(300.0, min=0.1, help="Seconds between orphan sweeps (one ListTasks per 100 tasks).").tag(
        config=True
    )
    grace_period = Float(
        600.0,
        min=0.0,
        help="Seconds a task must stay unowned before it is stopped or re-adopted; longer than any start.",
    ).tag(config=True)
    action = Enum(
        list(ACTIONS), default_value="stop", help="'stop' (or re-adopt), 'dry-run' (only log and count), or 'off'."
    ).tag(config=True)


class CloudWatchEmf(Configurable):
    """`c.CloudWatchEmf.*`: whether and where the hub writes CloudWatch EMF lines."""

    enabled = Bool(False, help="Write CloudWatch EMF lines for spawns and status sweeps.").tag(config=True)
    path = Unicode("-", help="'-' for stdout, else a file the lines are appended to.").tag(config=True)
    namespace = Unicode("CalliopeHub", help="CloudWatch namespace of the metrics.").tag(config=True)

    @validate("namespace")
    def _validate_namespace(self, proposal: dict[str, Any]) -> str:
        """A character set, which no traitlets type expresses; CloudWatch would drop the lines."""
        value: str = proposal["value"]
        if not 1 <= len(value) <= 255 or not set(value) <= _NAMESPACE_CHARS:
            raise ValueError(
                f"CloudWatchEmf.namespace must be 1-255 of A-Z a-z 0-9 . - _ / # : and space, not {value!r}"
            )
        return value


class CalliopeHA(Configurable):
    """`c.CalliopeHA.*`: an active/standby hub pair (calliope_hub.hub.ha); read only by that app."""

    instance = Unicode(
        "", help="Names this hub in the health answer and the lock's session ('' = host name and pid)."
    ).tag(config=True)
    health_ip = Unicode("0.0.0.0", help="Address of the leader health endpoint (GET /leader).").tag(config=True)
    health_port = Integer(
        8090, min=1, max=65535, help="Port of GET /leader: 200 on the serving hub, 503 on a standby."
    ).tag(config=True)
    standby_poll_interval = Float(
        0.5, min=0.05, max=60.0, help="Seconds between a standby's asks for the leader lock."
    ).tag(config=True)
    fence_check_interval = Float(
        1.0, min=0.1, max=60.0, help="Seconds between the leader's proofs that its lock session is alive."
    ).tag(config=True)
    fence_timeout = Float(
        5.0,
        min=0.5,
        max=300.0,
        help="The leader exits when it could not prove its lock for this long; a new leader waits as long "
        "before it serves, so two hubs never serve at once. Larger than fence_check_interval.",
    ).tag(config=True)


@dataclass(frozen=True)
class EventSettings:
    enabled: bool
    queue_size: int
    reconcile_interval: float
    sweeping: bool
    confirm_window: float
    sqs_queue_url: str
    sqs_target: EcsTarget | None
    sqs_max_receives: int


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything the HubRuntime builds from: config turned into plain values in this one place."""

    target: EcsTarget
    hub_id: str
    catalog_path: str
    #: False for the stock-pattern baseline, which meets ECS's quota head on
    client_quotas: bool
    poll_interval: float
    poll_jitter: float
    events: EventSettings
    orphan_interval: float
    orphan_grace_period: float
    orphan_action: str
    emf_enabled: bool
    emf_path: str
    emf_namespace: str
    #: the secret store and the task definitions the hub registers (calliope_hub.ecs.secrets, .taskdefs)
    ssm_target: EcsTarget
    secret_root: str
    secret_environment: tuple[str, ...]
    kms_key_id: str
    ssm_higher_throughput: bool
    local_commands: bool
    execution_role_arn: str
    task_role_arn: str

    @classmethod
    def from_config(cls, spawner: ECSSpawner, *, client_quotas: bool = True) -> RuntimeSettings:
        """Read every c.* class; a bad value raises ValueError/TraitError naming the setting."""
        config: Config = spawner.config
        _check_trait_names(spawner)
        _check_region(spawner.region)
        events, orphans, emf = CalliopeEvents(config=config), OrphanSweep(config=config), CloudWatchEmf(config=config)
        _check_endpoint("ECSSpawner.endpoint_url", spawner.endpoint_url)
        if not uses_local_commands("auto", spawner.endpoint_url) and list(spawner.subnets) == [LOCAL_SUBNET]:
            raise ValueError(
                f"ECSSpawner.subnets is still the local default {[LOCAL_SUBNET]} but endpoint_url "
                f"{spawner.endpoint_url or '(AWS)'!r} is not local ECS: set the VPC subnets the tasks run in"
            )
        _check_endpoint("CalliopeEvents.sqs_endpoint_url", events.sqs_endpoint_url)
        ssm_endpoint = spawner.endpoint_url if spawner.ssm_endpoint_url is None else spawner.ssm_endpoint_url
        _check_endpoint("ECSSpawner.ssm_endpoint_url", ssm_endpoint)
        if spawner.aws_profile:
            # botocore would raise this only when the runtime starts, where JupyterHub's startup
            # check of running servers takes any error for "not running" and stops them.
            BotocoreSession(profile=spawner.aws_profile).get_scoped_config()
        sqs_target = EcsTarget(spawner.region, events.sqs_endpoint_url or None) if events.sqs_queue_url else None
        return cls(
            target=EcsTarget(spawner.region, spawner.endpoint_url or None, spawner.aws_profile or None),
            hub_id=spawner.hub_id,
            catalog_path=spawner.catalog_path,
            client_quotas=client_quotas,
            poll_interval=spawner.poll_interval,
            poll_jitter=spawner.poll_jitter,
            events=EventSettings(
                enabled=events.enabled,
                queue_size=events.queue_size,
                reconcile_interval=events.reconcile_interval,
                sweeping=events.sweeps == "hub",
                confirm_window=events.confirm_window,
                sqs_queue_url=events.sqs_queue_url,
                sqs_target=sqs_target,
                sqs_max_receives=events.sqs_max_receives,
            ),
            orphan_interval=orphans.interval,
            orphan_grace_period=orphans.grace_period,
            orphan_action=orphans.action,
            emf_enabled=emf.enabled,
            emf_path=emf.path,
            emf_namespace=emf.namespace,
            ssm_target=EcsTarget(spawner.region, ssm_endpoint or None, spawner.aws_profile or None),
            secret_root=spawner.secret_parameter_root,
            secret_environment=tuple(dict.fromkeys([*JUPYTERHUB_SECRET_ENV, *spawner.secret_environment])),
            kms_key_id=spawner.ssm_kms_key_id,
            ssm_higher_throughput=spawner.ssm_higher_throughput,
            local_commands=uses_local_commands(spawner.task_commands, spawner.endpoint_url),
            execution_role_arn=spawner.execution_role_arn,
            task_role_arn=spawner.task_role_arn,
        )

    def launch_settings(self) -> LaunchSettings:
        """What the launch path (calliope_hub.ecs.launch) reads."""
        return LaunchSettings(
            hub_id=self.hub_id,
            secret_root=self.secret_root,
            secret_environment=self.secret_environment,
            local_commands=self.local_commands,
            execution_role_arn=self.execution_role_arn,
            task_role_arn=self.task_role_arn,
        )

    def watcher_options(self) -> dict[str, Any]:
        """TaskWatcher keyword arguments: the poll interval, or the reconcile cadence with events."""
        jitter = min(max(self.poll_jitter, 0.0), 0.99)
        if not self.events.enabled:
            return {"sweep_interval": self.poll_interval, "jitter": jitter}
        return {
            "sweep_interval": self.events.reconcile_interval,
            "jitter": jitter,
            "sweeping": self.events.sweeping,
            "confirm_window": self.events.confirm_window,
        }


def _check_endpoint(name: str, url: str) -> None:
    """'' (AWS's own endpoint) or a URL botocore accepts, checked before any client is made."""
    if url and not (is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)):
        raise ValueError(f"{name} must be an http(s) URL such as http://127.0.0.1:9400, or '', not {url!r}")


def _known_regions() -> frozenset[str]:
    """Every Region botocore's endpoint data lists for ECS, in every partition (commercial, China, GovCloud...)."""
    session = BotocoreSession()
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("ecs", partition_name=partition)
    )


def _check_region(region: str) -> None:
    """Format first (a name like "EU (Ireland)" is a label, not a Region), then botocore's list."""
    if _REGION.fullmatch(region) and region in _known_regions():
        return
    near = difflib.get_close_matches(region, _known_regions(), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"ECSSpawner.region must be an AWS Region ECS runs in, such as us-east-1, not {region!r}{hint}")


def _check_trait_names(spawner: ECSSpawner) -> None:
    """traitlets only warns about an unknown name; a typo would silently leave a default (subnets!) in force."""
    name = type(spawner).__name__
    known = set(spawner.trait_names(config=True))
    unknown = sorted(key for key in spawner.config.get(name) or {} if key not in known)
    if unknown:
        hints = [_with_hint(key, known) for key in unknown]
        raise ValueError(f"c.{name} has no setting {', '.join(hints)}")


def _with_hint(key: str, known: set[str]) -> str:
    near = difflib.get_close_matches(key, known, n=1)
    return f"{key!r} (did you mean {near[0]!r}?)" if near else repr(key)
