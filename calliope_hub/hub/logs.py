"""Our modules' log lines go where JupyterHub's go: its handlers, its format, its level.

Every module logs through `logging.getLogger(__name__)`, so under "calliope_hub". In a hub,
nothing configures that tree: JupyterHub's own logger does not propagate to the root, the
root has no handler, and Python's last-resort handler prints WARNING and above as a bare
message on stderr, while INFO is dropped. JupyterHub solves the same problem for tornado and
oauthlib in `JupyterHub.init_logging` by making its application logger their parent; we do
the same for "calliope_hub", once, when the HubRuntime is built inside the hub.

The level is left unset, so it is JupyterHub's (`--log-level`, `c.Application.log_level`)
and follows it; an operator who wants a different level for us sets it on "calliope_hub"
after this runs (e.g. in jupyterhub_config.py, through `logging.getLogger`).
"""

from __future__ import annotations

import logging
from typing import Any

#: the logger every calliope_hub module's logger descends from
ROOT = "calliope_hub"


def attach_to_jupyterhub_log(app_log: logging.Logger | logging.LoggerAdapter[Any]) -> logging.Logger:
    """Make JupyterHub's application logger the parent of "calliope_hub"; idempotent.

    `app_log` is the hub's own logger (e.g. a spawner's `log`); an adapter is unwrapped.
    Returns the "calliope_hub" logger.
    """
    parent = app_log.logger if isinstance(app_log, logging.LoggerAdapter) else app_log
    ours = logging.getLogger(ROOT)
    if parent is ours or ours.parent is parent:
        return ours
    ours.parent = parent
    ours.propagate = True
    ours.setLevel(logging.NOTSET)  # take JupyterHub's level; setLevel also clears logging's level caches
    return ours
