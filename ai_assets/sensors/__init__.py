from ai_assets.sensors.s3 import s3_image_sensor
from ai_assets.sensors.slack import slack_on_run_failure, slack_success_digest

__all__ = ["s3_image_sensor", "slack_on_run_failure", "slack_success_digest"]
