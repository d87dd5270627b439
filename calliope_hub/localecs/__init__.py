"""Local ECS: an ECS-compatible control plane that runs tasks on this machine.

Embed it with `LocalEcs(LocalEcsConfig(...))`; run it with `calliope-hub local-ecs`.
The hub never imports this package: the ECS wire protocol is the only link between them.
"""

from calliope_hub.localecs.config import LocalEcsConfig
from calliope_hub.localecs.service import LocalEcs

__all__ = ["LocalEcs", "LocalEcsConfig"]
