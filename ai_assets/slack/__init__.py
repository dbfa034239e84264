"""Slack message text about classification runs (pure formatting)."""
