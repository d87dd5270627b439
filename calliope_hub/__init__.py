"""Calliope Hub: JupyterHub with every user server as an AWS ECS task."""

__version__ = "0.1.0"
