"""`calliope-hub ecs setup`: register the catalog's task definitions ahead of the hub, for operators who prefer that.

The hub needs no setup step: it registers each server's own definition at its first spawn,
and only when its content hash is new. This command does the same for the catalog's service
definitions (the base each server's definition is derived from), so an operator sees what
registers, checks the IAM permissions before users arrive, and, behind `--create-cluster`,
creates the cluster. `--dry-run` only reads (DescribeClusters, ListTaskDefinitions,
DescribeTaskDefinition) and prints what it would do.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

from ..catalog import Catalog, CatalogConfigError, load_catalog
from ..ecs.api import EcsApi, EcsApiError, EcsTarget
from ..ecs.taskdefs import TaskDefinitions, spec_hash, uses_local_commands, with_roles


@dataclass(frozen=True)
class SetupOptions:
    target: EcsTarget
    cluster: str
    catalog: Catalog
    local: bool
    execution_role_arn: str
    task_role_arn: str
    create_cluster: bool
    dry_run: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="action")
    setup = sub.add_parser("setup", help="register the catalog's task definitions (and create the cluster)")
    setup.add_argument("--cluster", default="calliope", help="ECS cluster (c.ECSSpawner.cluster)")
    setup.add_argument("--region", default="us-east-1", help="AWS Region (c.ECSSpawner.region)")
    setup.add_argument("--endpoint-url", default="", help="ECS endpoint ('' = AWS's own; local ECS: its URL)")
    setup.add_argument("--profile", default="", help="AWS profile ('' = the default chain)")
    setup.add_argument("--catalog", default="", help="directory of service YAML files ('' = the built-in services)")
    setup.add_argument(
        "--task-commands",
        choices=("auto", "image", "local"),
        default="auto",
        help="as c.ECSSpawner.task_commands: 'auto' is 'local' for a loopback endpoint",
    )
    setup.add_argument("--execution-role-arn", default="", help="as c.ECSSpawner.execution_role_arn")
    setup.add_argument("--task-role-arn", default="", help="as c.ECSSpawner.task_role_arn")
    setup.add_argument("--create-cluster", action="store_true", help="create the cluster when it does not exist")
    setup.add_argument("--dry-run", action="store_true", help="only read, and print what would be done")


def run(args: argparse.Namespace) -> int:
    try:
        options = SetupOptions(
            target=EcsTarget(args.region, args.endpoint_url or None, args.profile or None),
            cluster=args.cluster,
            catalog=load_catalog(args.catalog or None),
            local=uses_local_commands(args.task_commands, args.endpoint_url),
            execution_role_arn=args.execution_role_arn,
            task_role_arn=args.task_role_arn,
            create_cluster=args.create_cluster,
            dry_run=args.dry_run,
        )
    except CatalogConfigError as e:
        print(f"calliope-hub ecs setup: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(setup(options))
    except EcsApiError as e:
        print(f"calliope-hub ecs setup: ECS refused: {e}", file=sys.stderr)
        return 1


async def setup(options: SetupOptions) -> int:
    """Print one line per step; 0 when the cluster and every definition are (or would be) in place."""
    api = await EcsApi.create(options.target)
    try:
        ready = await _cluster(api, options)
        definitions = TaskDefinitions(api)
        for name in options.catalog.services:
            request = with_roles(
                options.catalog.task_definition(name, local=options.local),
                options.execution_role_arn,
                options.task_role_arn,
            )
            await _definition(definitions, name, request, dry_run=options.dry_run)
    finally:
        await api.close()
    return 0 if ready else 1


async def _cluster(api: EcsApi, options: SetupOptions) -> bool:
    active = await api.cluster_is_active(options.cluster)
    if active:
        print(f"cluster {options.cluster}: exists")
    elif not options.create_cluster:
        print(f"cluster {options.cluster}: MISSING (pass --create-cluster, or create it yourself)")
    elif options.dry_run:
        print(f"cluster {options.cluster}: would create")
    else:
        print(f"cluster {options.cluster}: created {await api.ensure_cluster(options.cluster)}")
    return active or options.create_cluster


async def _definition(definitions: TaskDefinitions, service: str, request: dict, *, dry_run: bool) -> None:
    family, digest = str(request["family"]), spec_hash(request)
    if dry_run:
        found = await definitions.find(family, digest)
        print(f"{service}: up to date: {found}" if found else f"{service}: would register {family} ({digest})")
        return
    registered = definitions.outcomes["registered"]
    arn = await definitions.ensure(request)
    print(f"{service}: {'registered' if definitions.outcomes['registered'] > registered else 'up to date'}: {arn}")
