"""The JupyterHub binding: the only package that imports jupyterhub or tornado.

What each module does is in the README's code map (one list, kept whole by tests/test_docs.py).
templates/ extends JupyterHub's pages (the home page shows each server's service and size).
"""

from pathlib import Path

#: for c.JupyterHub.template_paths: our pages extend JupyterHub's own through its "templates/" prefix
TEMPLATES = str(Path(__file__).parent / "templates")
