"""Dagster resources: thin configurable wrappers around the pure modules."""

from ai_assets.resources.classifier import ClassifierResource
from ai_assets.resources.results_db import ResultsDatabaseResource
from ai_assets.resources.s3 import ImageBucketResource
from ai_assets.resources.slack import SlackNotifierResource

__all__ = [
    "ClassifierResource",
    "ImageBucketResource",
    "ResultsDatabaseResource",
    "SlackNotifierResource",
]
