"""Warm pools: tasks already running for a service and size, claimed by a spawn in seconds.

A Fargate cold start (capacity, an ENI, an image pull with no cache) takes 20-90 s. A pool
task is started before any user exists, from the service's shared definition, and runs a
small launcher (`launcher.py`) that waits for one claim. A spawn that finds an idle task
claims it over the task's private address with a per-task secret (`secret.py`), hands over
the user's environment (the JupyterHub token included: it never crosses the ECS API), and
the launcher execs the real server. The keeper (`keeper.py`) fills, recycles and claims;
`config.py` is what an operator sets. docs/pool.md is the operator's view and the threat model.
"""
