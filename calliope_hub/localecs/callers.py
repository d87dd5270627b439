"""Who may call local ECS: with an access key ID configured, only requests signed with it.

Local ECS checks no signature and has no IAM, which is fine for a private endpoint. Under
`make up`, though, every user's JupyterLab can reach it, and without a gate code in Alice's
notebook could register a task definition naming Bob's secret, run it, and read the value
in its own task. On AWS, IAM stops that: a task role has no `ecs:RunTask` or
`iam:PassRole`. Here the hub's access key ID is the credential. Tasks never see it (their
environment is built clean, see process.py), so with `access_key_id` set every AWS call
(ECS, SSM, EFS) must carry it in its SigV4 `Credential`; any other key gets
UnrecognizedClientException, as AWS answers a key it does not know. The signature itself is
still not checked, so the key ID works as a bearer secret: keep it off command lines.
`/_localecs/` stays open: it holds no secret (faults and kills are for tests and benches).
"""

from __future__ import annotations

import hmac
import re

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

#: where `calliope-hub local-ecs` reads the key ID from, so it never shows in `ps`.
ACCESS_KEY_ENV = "CALLIOPE_LOCAL_ECS_ACCESS_KEY_ID"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
_REFUSED = "The security token included in the request is invalid."


def access_key_id(request: web.Request) -> str | None:
    """The access key ID a SigV4 request was signed with: its Authorization header or presigned query."""
    match = _CREDENTIAL.search(request.headers.get("Authorization", ""))
    if match is not None:
        return match.group(1)
    credential = request.query.get("X-Amz-Credential")
    return credential.split("/", 1)[0] if credential else None


def gate(expected: str | None) -> Middleware:
    """An aiohttp middleware: AWS calls need `expected` as their key ID (no gate when it is None)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.path.startswith("/_localecs/"):
            return await handler(request)
        given = (access_key_id(request) or "").encode("utf-8", "surrogateescape")
        if hmac.compare_digest(given, expected.encode()):
            return await handler(request)
        code = "UnrecognizedClientException"
        body = {"__type": code, "message": _REFUSED, "ErrorCode": code, "Message": _REFUSED}  # JSON 1.1 and REST-JSON
        return web.json_response(body, status=403, headers={"x-amzn-ErrorType": code})

    return middleware
