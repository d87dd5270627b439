"""`python -m calliope_hub.standins chat|waiide`: what local ECS runs for Chat and WAIIDE."""

import sys

from .server import main

sys.exit(main(sys.argv[1:]))
