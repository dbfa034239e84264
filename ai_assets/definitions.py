"""The code location: every Dagster object under ``ai_assets/defs/``, configured by the environment.

``dagster api grpc -m ai_assets.definitions`` (production), ``dagster dev`` and ``dg`` load
``defs``; the demo and the tests call ``build_defs()`` to rebuild it after changing the
environment.
"""

import functools
import os
from pathlib import Path

import dagster as dg

from ai_assets.settings import problems


class SettingsError(ValueError):
    """The environment cannot work as set: every mistake, each naming its variable and form."""


def build_defs() -> dg.Definitions:
    """The code location as the current environment configures it, after checking it."""
    if mistakes := problems():  # before any module reads a setting, so this is the one error
        raise SettingsError("ai_assets configuration: " + "; ".join(mistakes))
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


@dg.definitions
def defs() -> dg.Definitions:
    return _built_for(frozenset(os.environ.items()))


@functools.lru_cache(maxsize=1)
def _built_for(environment: frozenset[tuple[str, str]]) -> dg.Definitions:
    """``build_defs()`` once per environment: a run worker loads the code location twice, and a
    build costs ~0.3 s of CPU, most of it Dagster's scan of installed component types."""
    del environment  # the cache key: the settings build_defs reads
    return build_defs()
