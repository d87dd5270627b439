"""Running the whole product on this machine: local ECS, a real JupyterHub and its proxy.

`calliope-hub up`, the benches and the end-to-end tests all start the same stack from here.
"""
