"""EFS's REST-JSON wire protocol on local ECS's port: `/2015-02-01/...`, as botocore's `efs` model sends it.

ECS and SSM post to `/`; EFS names its resources in the path, so one endpoint serves all
three and a boto3 `efs` client needs only `endpoint_url`. Errors carry the code in the
`x-amzn-ErrorType` header and `{"ErrorCode", "Message", ...}` in the body, with EFS's HTTP
statuses (400 BadRequest, 403 AccessPointLimitExceeded, 404 ...NotFound, 409 ...AlreadyExists,
429 ThrottlingException), so botocore raises the modeled exception with its fields.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from calliope_hub.localecs.efs import EfsError, FileSystems, bad_request
from calliope_hub.localecs.model import EcsError

if TYPE_CHECKING:
    from calliope_hub.localecs.state import ControlPlane

log = logging.getLogger(__name__)

PATH_PREFIX = "/2015-02-01/"
Handler = Callable[[FileSystems, dict, str], tuple[int, dict | None]]


def _create_file_system(efs: FileSystems, body: dict, _: str) -> tuple[int, dict | None]:
    return 201, efs.create_file_system(body)


def _describe_file_systems(efs: FileSystems, query: dict, _: str) -> tuple[int, dict | None]:
    return 200, efs.describe_file_systems(query)


def _create_access_point(efs: FileSystems, body: dict, _: str) -> tuple[int, dict | None]:
    return 200, efs.create_access_point(body)


def _describe_access_points(efs: FileSystems, query: dict, _: str) -> tuple[int, dict | None]:
    return 200, efs.describe_access_points(query)


def _delete_access_point(efs: FileSystems, _: dict, ident: str) -> tuple[int, dict | None]:
    efs.delete_access_point(ident)
    return 204, None


#: (method, collection, has an ID in the path) -> (operation, handler)
ROUTES: dict[tuple[str, str, bool], tuple[str, Handler]] = {
    ("POST", "file-systems", False): ("CreateFileSystem", _create_file_system),
    ("GET", "file-systems", False): ("DescribeFileSystems", _describe_file_systems),
    ("POST", "access-points", False): ("CreateAccessPoint", _create_access_point),
    ("GET", "access-points", False): ("DescribeAccessPoints", _describe_access_points),
    ("DELETE", "access-points", True): ("DeleteAccessPoint", _delete_access_point),
}


def _route(method: str, path: str) -> tuple[str, Handler, str]:
    collection, _, ident = path[len(PATH_PREFIX) :].strip("/").partition("/")
    found = ROUTES.get((method, collection, bool(ident)))
    if found is None or "/" in ident:
        raise EcsError(
            "UnknownOperationException",
            f"local EFS does not implement {method} {path}; it serves "
            + ", ".join(operation for operation, _ in ROUTES.values())
            + ".",
            404,
        )
    return found[0], found[1], ident


async def _body(request: web.Request) -> dict:
    if request.method != "POST":
        return dict(request.query)
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError) as error:
        raise bad_request(f"Malformed JSON request body: {error}") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _error(error: EcsError) -> web.Response:
    extra = error.extra if isinstance(error, EfsError) else {}
    body = {"ErrorCode": error.code, "Message": error.message, **extra}
    return web.json_response(body, status=error.status, headers={"x-amzn-ErrorType": error.code})


async def handle(
    request: web.Request,
    plane: ControlPlane,
    admit: Callable[[str], bool],
    record: Callable[[str, str, float], None],
) -> web.Response:
    """One EFS call: route, admit under the quotas, run against the plane's file systems, render."""
    started = time.perf_counter()
    operation = "Unknown"
    try:
        operation, handler, ident = _route(request.method, request.path)
        if not admit(operation):
            raise EfsError("ThrottlingException", "Rate exceeded", 429)
        status, answer = handler(plane.file_systems, await _body(request), ident)
        response = web.json_response(answer, status=status) if answer is not None else web.Response(status=status)
        outcome = "ok"
    except EcsError as error:
        response, outcome = _error(error), "throttled" if error.code == "ThrottlingException" else "error"
    except Exception:
        log.exception("local EFS failed on %s", operation)
        response = _error(EcsError("InternalServerError", f"local EFS failed on {operation}; see its log.", 500))
        outcome = "error"
    response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    record(operation, outcome, (time.perf_counter() - started) * 1000)
    return response
