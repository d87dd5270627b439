"""calliope_hub's loggers hang under JupyterHub's app logger (in a real hub: tests/hub/test_events_handler.py)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from tornado.log import LogFormatter

from calliope_hub.hub.logs import ROOT, attach_to_jupyterhub_log

#: JupyterHub's default log_format (jupyterhub.app.JupyterHub.log_format)
FORMAT = "%(color)s[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s %(module)s:%(lineno)d]%(end_color)s %(message)s"


@pytest.fixture
def app_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger set up as JupyterHub sets up its own: a handler, its formatter, no propagation."""
    ours = logging.getLogger(ROOT)
    saved = ours.parent, ours.propagate, ours.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogFormatter(fmt=FORMAT, datefmt="%Y-%m-%d %H:%M:%S", color=False))
    app = logging.getLogger("JupyterHubForTest")
    app.addHandler(handler)
    app.propagate = False
    app.setLevel(logging.INFO)
    try:
        yield app, stream
    finally:
        ours.parent, ours.propagate = saved[0], saved[1]
        ours.setLevel(saved[2])
        app.removeHandler(handler)


def test_our_info_lines_take_jupyterhubs_handler_format_and_level(app_log: tuple[logging.Logger, io.StringIO]) -> None:
    app, stream = app_log
    module_log = logging.getLogger("calliope_hub.ecs.somewhere")
    assert attach_to_jupyterhub_log(logging.LoggerAdapter(app)) is attach_to_jupyterhub_log(app)  # idempotent
    module_log.info("an info line")
    module_log.debug("a debug line")
    app.setLevel(logging.DEBUG)  # --log-level=DEBUG reaches us too
    module_log.debug("now a debug line")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"\[I \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} calliope_hub.ecs.somewhere test_logs:\d+\] an info line", lines[0]
    )
    assert lines[1].startswith("[D ") and lines[1].endswith("now a debug line")
