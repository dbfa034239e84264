from ai_assets.sensors.automation import summary_automation_sensor
from ai_assets.sensors.s3 import s3_image_sensor

__all__ = ["s3_image_sensor", "summary_automation_sensor"]
