"""Dagster resources: thin configurable wrappers around the pure modules."""

from ai_assets.resources.classifier import ClassifierResource
from ai_assets.resources.results_db import ResultsDatabase
from ai_assets.resources.s3 import ImageBucket
from ai_assets.resources.slack import SlackNotifier

__all__ = ["ClassifierResource", "ImageBucket", "ResultsDatabase", "SlackNotifier"]
