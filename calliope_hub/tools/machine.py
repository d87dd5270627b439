"""What machine a benchmark ran on: enough to judge whether two sets of figures compare."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    """Enough to judge whether someone else's figures are comparable with these."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jupyterhub

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jupyterhub": jupyterhub.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
