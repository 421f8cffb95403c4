"""``fracture-al``: the one command line of the project, split by area as RQ's ``rq/cli`` is.

``base`` holds the group and what every area shares; each other module registers its commands:
``models`` (train, evaluate, predict, models), ``services`` (serve, up, worker), ``jobs``
(retrain, jobs, queue, report), ``imports`` (import ...), ``inspection`` (inspect, app, send-back).
"""

from fracture_al.cli import imports, inspection, jobs, models, services  # noqa: F401 (they register commands)
from fracture_al.cli.base import main

__all__ = ["main"]
