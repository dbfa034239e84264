"""The code location: every Dagster object under ``ai_assets/defs/``, configured by the environment.

``dagster api grpc -m ai_assets.definitions`` (production), ``dagster dev`` and ``dg`` load
``defs``; the demo and the tests call ``build_defs()`` to rebuild it after changing the
environment.
"""

from pathlib import Path

import dagster as dg


def build_defs() -> dg.Definitions:
    """The code location as the current environment configures it."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs()
