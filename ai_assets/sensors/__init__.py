from ai_assets.sensors.s3 import s3_image_sensor

__all__ = ["s3_image_sensor"]
