from ai_assets.assets.images import (
    classify_images_job,
    image_classifications,
    label_summary,
    s3_images,
)

__all__ = ["classify_images_job", "image_classifications", "label_summary", "s3_images"]
