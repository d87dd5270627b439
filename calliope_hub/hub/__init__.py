"""The JupyterHub binding: the only package that imports jupyterhub or tornado.

config.py holds every `c.*` class; runtime.py the HubRuntime that builds and closes the
process's ECS client, watchers, event ingestion, orphan sweep and EMF writer; app.py our
JupyterHub app (`calliope-jupyterhub`), which checks the config and primes the status cache at
start, and ha.py its active/standby form; events_handler.py the EventBridge endpoint; owners.py
ownership and re-adoption; lock.py the orphan-sweep lock.
templates/ extends JupyterHub's pages (the home page shows each server's service and size).
"""

from pathlib import Path

#: for c.JupyterHub.template_paths: our pages extend JupyterHub's own through its "templates/" prefix
TEMPLATES = str(Path(__file__).parent / "templates")
