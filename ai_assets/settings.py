"""The configuration contract of DESIGN.md: environment variables and their embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

DEFAULT_BUCKET = "images"
DEFAULT_WEBSERVER_URL = "http://localhost:3000"


def setting(name: str, default: str) -> str | dg.EnvVar:
    """``dg.EnvVar(name)`` when the variable is set (resolved at run time), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def int_setting(name: str, default: int) -> int | dg.EnvVar:
    return dg.EnvVar.int(name) if os.environ.get(name) else default


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home")


def default_database_url() -> str:
    """The embedded default: a SQLite file under ``DAGSTER_HOME``."""
    return f"sqlite:///{dagster_home() / 'ai_assets.sqlite'}"
