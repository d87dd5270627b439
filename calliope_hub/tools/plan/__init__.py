"""`calliope-hub plan`: size a deployment from a model fitted to our own bench runs.

inputs (what is asked, and the unmeasurable inputs with their sources), calibrate (the fit),
model (the prediction), report (tables, matrix), chart (matplotlib, lazily), command (CLI).
"""

from calliope_hub.tools.plan.command import add_arguments, run

__all__ = ["add_arguments", "run"]
