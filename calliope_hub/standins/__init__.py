"""Local stand-ins for services whose images are not public (Chat, WAIIDE).

Local ECS's process mode runs `python -m calliope_hub.standins chat|waiide` in their place: a
small server that the hub treats like a JupyterHub single-user server, and that says plainly
on its page that it is a stand-in.
"""
