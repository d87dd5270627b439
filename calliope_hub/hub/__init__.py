"""The JupyterHub binding: the only package that imports jupyterhub or tornado.

config.py holds every `c.*` class; runtime.py the HubRuntime that builds and closes the
process's ECS client, watchers, event ingestion, orphan sweep and EMF writer; events_handler.py
the EventBridge endpoint; owners.py ownership and re-adoption; lock.py the orphan-sweep lock.
"""
