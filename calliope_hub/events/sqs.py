"""EventBridge → SQS → the TaskWatcher: for hubs that accept nothing inbound.

One long poll (20 s, up to 10 messages) at a time, so an idle queue costs three requests a
minute. A message is deleted only after its events were handed to the watchers. A message
whose events cannot be applied is made visible again after a short backoff (instead of the
whole visibility timeout) and retried; once SQS has delivered it `max_receives` times it is
a poison message: counted and deleted, so it never blocks the queue. A body that is not an
event at all is poison at once, because retrying cannot fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from calliope_hub.ecs.api import EcsTarget, aws_client
from calliope_hub.events.ingest import EventFormatError, EventIngest, count

log = logging.getLogger(__name__)


class SqsEventConsumer:
    """Long-polls one queue and applies the task state changes it carries.

    The HubRuntime builds one with its SQS client and its `EventIngest`, then `start()`s and
    `close()`s it; the client stays the runtime's to close.
    """

    def __init__(
        self,
        client: Any,
        queue_url: str,
        ingest: EventIngest,
        *,
        max_receives: int = 5,
        wait_seconds: int = 20,
        visibility_timeout: int = 30,
        retry_delay: int = 5,
    ):
        if max_receives < 1 or not 0 <= wait_seconds <= 20:
            raise ValueError("max_receives must be >= 1 and wait_seconds within 0..20")
        self._client = client
        self.queue_url = queue_url
        self._ingest = ingest
        self.max_receives = max_receives
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.retry_delay = retry_delay
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Poll in the background of the running loop until `close()`."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"SQS consumer {self.queue_url}")

    async def run(self) -> None:
        """Poll until cancelled; a failed receive waits a little and tries again."""
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SQS receive from %s failed; retrying in %ss", self.queue_url, self.retry_delay)
                await asyncio.sleep(self.retry_delay)

    async def poll_once(self) -> int:
        """One long poll; returns how many messages were settled (deleted)."""
        answer = await self._client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_seconds,
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        settled = [m for m in answer.get("Messages", []) if await self._handle(m)]
        if settled:
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(settled)]
            result = await self._client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            for failure in result.get("Failed", []):
                log.warning("SQS delete failed (it will be delivered again): %s", failure)
        return len(settled)

    async def _handle(self, message: dict[str, Any]) -> bool:
        """Apply one message: True when it may be deleted (applied, or dropped as poison)."""
        try:
            delivery = self._ingest.receive(message.get("Body", ""))
        except EventFormatError as e:
            return self._poison(message, f"not an event: {e}")
        try:
            for change in delivery.changes:
                self._ingest.apply(change)
        except Exception as e:
            receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            if receives >= self.max_receives:
                return self._poison(message, f"failed {receives} times, last: {e!r}")
            log.warning("SQS message %s failed (try %d): %r", message.get("MessageId"), receives, e)
            await self._client.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=message["ReceiptHandle"],
                VisibilityTimeout=self.retry_delay * receives,
            )
            return False
        return True

    def _poison(self, message: dict[str, Any], why: str) -> bool:
        count("poison")
        log.error("dropping SQS message %s: %s", message.get("MessageId"), why)
        return True

    async def close(self) -> None:
        """Cancel the poll loop and wait for it; the client is the caller's to close."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def sqs_client(target: EcsTarget) -> Any:
    """An aiobotocore SQS client (an async context manager) whose read outlasts the long poll."""
    return aws_client("sqs", target, read_timeout=30)
