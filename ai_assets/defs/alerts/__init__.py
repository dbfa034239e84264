"""Notifications: Slack on run failure at once, and digests of successful runs."""
