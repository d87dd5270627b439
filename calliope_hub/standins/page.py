"""The stand-in's page, in the hub's own look: JupyterHub's stylesheet and logo, served by the stand-in.

The files come from the JupyterHub installed next to it (the hub's `static/`), so the page looks
like the hub's pages and loads nothing from the internet. The page says plainly what it is and
links back to the hub's home, which a user otherwise has no way back to from a stand-in.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from jupyterhub._data import DATA_FILES_PATH

#: JupyterHub's static files: css/style.min.css (its Bootstrap build), images/, favicon.ico.
HUB_STATIC = Path(DATA_FILES_PATH) / "static"


def render_page(
    *, title: str, name: str, service: str, size: str, user: str, server: str, static: str, hub_home: str
) -> str:
    """The page's HTML; every value is escaped here, so callers pass plain text."""
    fields = {
        "title": title,
        "name": name,
        "service": service,
        "size": size or "(not given)",
        "user": user or "(unknown)",
        "server": server or "(default)",
        "static": static,
        "hub_home": hub_home,
    }
    return PAGE.format(**{key: escape(value) for key, value in fields.items()})


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{static}css/style.min.css">
<link rel="icon" href="{static}favicon.ico" type="image/x-icon">
</head>
<body>
<nav class="navbar navbar-expand-sm bg-body-tertiary mb-4">
  <div class="container-fluid">
    <span id="jupyterhub-logo" class="navbar-brand">
      <a href="{hub_home}"><img src="{static}images/jupyterhub-80.png" alt="JupyterHub logo" class="jpy-logo"
        title="Home"></a>
    </span>
    <ul class="navbar-nav me-auto mb-0">
      <li class="nav-item"><a class="nav-link" href="{hub_home}">Home</a></li>
    </ul>
    <span class="navbar-text">{user}</span>
  </div>
</nav>
<main class="container">
  <h1>{name} <small class="text-body-secondary">local stand-in</small></h1>
  <div class="alert alert-info" role="note">
    <strong>This is not {name}.</strong> It is a local stand-in that local ECS runs because the real
    {name} image is not public. It answers the hub like a real server, so spawning, routing,
    activity and stopping can be tried end to end.
  </div>
  <dl class="row">
    <dt class="col-sm-3">Service</dt><dd class="col-sm-9" id="calliope-service">{service}</dd>
    <dt class="col-sm-3">Size</dt><dd class="col-sm-9" id="calliope-size">{size}</dd>
    <dt class="col-sm-3">User</dt><dd class="col-sm-9">{user}</dd>
    <dt class="col-sm-3">Server name</dt><dd class="col-sm-9">{server}</dd>
  </dl>
  <a class="btn btn-primary" id="back-to-hub" href="{hub_home}">Back to the hub home</a>
</main>
</body>
</html>
"""
