"""EventBridge "ECS Task State Change" events: in (HTTP and SQS ingestion) and out (the monitor).

An event is a hint: only ECS's own answer may end a server. Nothing here imports jupyterhub,
tornado or traitlets; the hub's HTTP handler (calliope_hub.hub) and its runtime are the
callers. Importing this package imports none of its modules, so the monitor starts light.
"""
