"""The secret store: a server's secret environment goes through SSM Parameter Store, never the ECS API.

RunTask overrides come back verbatim in every DescribeTasks answer, and a task definition's
`environment` in every DescribeTaskDefinition, so anyone with those read permissions would
hold every server's JupyterHub API token (docs/security.md). Instead, before RunTask, the
hub writes each secret value to a SecureString parameter, and a task definition names it in
the container's `secrets`; ECS (the task execution role) resolves it as the task starts.
Which parameter: a leased slot's, for a service without per-user storage (calliope_hub.ecs.slots:
deleted once the task has left PENDING), else one stable per (hub, user, server), named by the
server's own definition, rotated on every start and deleted once the task is gone.
docs/security.md is the threat model.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore import xform_name
from botocore.exceptions import BotoCoreError, ClientError

from ..ecsfacts import SSM_QUOTA_CATEGORIES, Quota, QuotaBuckets, client_quotas
from .api import THROTTLE_CODES

log = logging.getLogger(__name__)

#: What JupyterHub 6.1.1's Spawner.get_env() puts that grants anything: the server's API token
#: (under both names; it is also the server's OAuth client secret). JUPYTERHUB_CLIENT_ID and
#: the SSL key file *paths* are not secrets.
JUPYTERHUB_SECRET_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")
#: SSM: DeleteParameters takes at most 10 names.
DELETE_BATCH = 10
_UNESCAPED = re.compile(r"[A-Za-z0-9.-]")


#: SSM's answers that may pass: its server-side failure, and "too many updates" of one parameter at once
_SSM_RETRYABLE = frozenset({"InternalServerError", "TooManyUpdates"})


class SecretStoreError(Exception):
    """A parameter could not be written or deleted: "Operation: Code: message".

    `code` and `throttled` read as EcsApiError's do. `transient` is SSM's own rule, which the
    launch's retry follows: a throttle, a server-side failure or no answer at all may pass; SSM's
    other codes (ParameterLimitExceeded, AccessDeniedException...) will not. SSM's codes, unlike
    ECS's, do not all end in "Exception", so ECS's rule cannot tell them apart.
    """

    def __init__(self, operation: str, code: str, message: str, *, answered: bool = True):
        super().__init__(f"{operation}: {code}: {message}")
        self.operation = operation
        self.code = code
        self.message = message
        self.transient = self.throttled or code in _SSM_RETRYABLE or not answered

    @property
    def throttled(self) -> bool:
        return self.code in THROTTLE_CODES


def escape_name_part(value: str) -> str:
    """One level of a parameter name: letters, digits, '.', '-' kept; anything else as _XX per UTF-8 byte.

    Injective ('_' itself is escaped), so two users never share a name. '' becomes '_'.
    """
    if not value:
        return "_"
    return "".join(ch if _UNESCAPED.fullmatch(ch) else "".join(f"_{b:02X}" for b in ch.encode()) for ch in value)


def server_prefix(root: str, hub_id: str, user: str, server: str) -> str:
    """`<root>/<hub>/<user>/<server>`: the stable home of one server's parameters."""
    parts = [escape_name_part(part) for part in (hub_id, user, server)]
    return "/".join([root.rstrip("/"), *parts])


def split_environment(
    environment: Mapping[str, str], secret_names: Sequence[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret): the environment RunTask may carry, and what only the secret store may."""
    secret = {name: value for name, value in environment.items() if name in secret_names and value}
    plain = {name: value for name, value in environment.items() if name not in secret_names}
    return plain, secret


@dataclass(frozen=True)
class ServerSecrets:
    """One server's parameters: name -> value, and the container `secrets` that reference them."""

    values: dict[str, str]
    references: list[dict[str, str]]

    @classmethod
    def plan(cls, prefix: str, secret_env: Mapping[str, str]) -> ServerSecrets:
        """One parameter per distinct value (the token under two names is written once), named by its first variable."""
        values: dict[str, str] = {}
        by_value: dict[str, str] = {}
        references = []
        for env_name in sorted(secret_env):
            value = secret_env[env_name]
            parameter = by_value.get(value)
            if parameter is None:
                parameter = by_value[value] = f"{prefix}/{env_name}"
                values[parameter] = value
            references.append({"name": env_name, "valueFrom": parameter})
        return cls(values=values, references=references)


class SecretStore:
    """Writes and deletes SecureString parameters through one shared aiobotocore `ssm` client.

    Each call first takes a token from the client's own bucket (`quotas`: ecsfacts.client_quotas), and so
    does each of botocore's own retries, so a burst of spawns queues here instead of being
    throttled by SSM, whose write quota is far below ECS's (calliope_hub.ecsfacts).
    """

    def __init__(self, client: Any, *, kms_key_id: str = "", quotas: dict[str, Quota] | None = None):
        """`quotas`: SSM's at the hub's share unless given; {} for none (a test that meets SSM's throttle head on)."""
        self._client = client
        self._kms_key_id = kms_key_id
        quotas = client_quotas(SSM_QUOTA_CATEGORIES) if quotas is None else quotas
        self._buckets = QuotaBuckets(quotas) if quotas else None
        self._gates: dict[str, asyncio.Lock] = {}
        #: names waiting for a shared DeleteParameters (clear), with whoever waits for each
        self._clears: list[tuple[str, asyncio.Future[None]]] = []
        self._clearing: asyncio.Task[None] | None = None
        client.meta.events.register("before-send.ssm", self._charge_retry)

    async def put(self, secrets: ServerSecrets) -> None:
        """Write (or overwrite: a new start rotates the value) every parameter, before RunTask."""
        for name, value in secrets.values.items():
            await self.put_value(name, value)

    async def put_value(self, name: str, value: str, *, prepaid: bool = False) -> None:
        """One SecureString, created or overwritten; `prepaid`: the caller took the token (wait_turn)."""
        params: dict[str, Any] = {"Name": name, "Value": value, "Type": "SecureString", "Overwrite": True}
        if self._kms_key_id:  # else SSM's AWS-managed key, alias/aws/ssm
            params["KeyId"] = self._kms_key_id
        await self._call("PutParameter", params, prepaid=prepaid)

    async def wait_turn(self, operation: str) -> None:
        """Queue for `operation`'s token and take it, before the caller holds something scarce (a slot)."""
        await self._take_token(operation)

    async def delete(self, names: Sequence[str]) -> None:
        """Delete parameters once their task is gone; a name already gone is not an error."""
        names = list(names)
        for start in range(0, len(names), DELETE_BATCH):
            await self._call("DeleteParameters", {"Names": names[start : start + DELETE_BATCH]})

    async def clear(self, name: str) -> None:
        """Delete one parameter in a DeleteParameters shared with every other clear waiting for its turn.

        Slot leases end one at a time (calliope_hub.ecs.slots), and a slot is free again only once its
        parameter is gone: one call per name would hold slot reuse, and so cold spawns, to the delete
        bucket's 2.4 calls a second, below PutParameter's 8 with higher throughput. Names that gather
        while the bucket refills go out together, up to DELETE_BATCH a call.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._clears.append((name, waiter))
        if self._clearing is None or self._clearing.done():
            self._clearing = asyncio.create_task(self._clear_in_batches(), name="calliope ssm clears")
        await waiter

    async def _clear_in_batches(self) -> None:
        while self._clears:
            await self._take_token("DeleteParameters")  # the names queued meanwhile join this call
            batch, self._clears = self._clears[:DELETE_BATCH], self._clears[DELETE_BATCH:]
            outcome: Exception | None = None
            try:
                await self._call("DeleteParameters", {"Names": [name for name, _ in batch]}, prepaid=True)
            except Exception as e:  # every waiter hears of it; none is left waiting for a batch that ended
                outcome = e
            for _, waiter in batch:
                if waiter.done():  # its caller was cancelled
                    continue
                if outcome is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(outcome)

    async def _call(self, operation: str, params: dict[str, Any], *, prepaid: bool = False) -> None:
        if not prepaid:
            await self._take_token(operation)
        method = getattr(self._client, xform_name(operation))
        try:
            await method(**params)
        except ClientError as e:
            error = e.response.get("Error", {})
            raise SecretStoreError(
                operation, str(error.get("Code") or "Unknown"), str(error.get("Message", ""))
            ) from None
        except BotoCoreError as e:
            raise SecretStoreError(operation, type(e).__name__, str(e), answered=False) from None

    async def _take_token(self, operation: str) -> None:
        """Wait for the operation's bucket; waiters queue in order, each sleeping until its token is due."""
        buckets = self._buckets
        if buckets is None:
            return
        async with self._gates.setdefault(operation, asyncio.Lock()):
            while not buckets.try_take(operation):
                await asyncio.sleep(max(buckets.delay_for(operation), 0.001))

    async def _charge_retry(self, *, event_name: str, request: Any = None, **_: Any) -> None:
        """botocore's own retries spend the same quota: every attempt after the first waits for its token."""
        retries = (getattr(request, "context", None) or {}).get("retries") or {}
        if int(retries.get("attempt", 1)) > 1:
            await self._take_token(event_name.rsplit(".", 1)[-1])
