from ai_assets.assets.images import (
    BATCH_TAG,
    classify_images_job,
    image_classifications,
    label_summary,
    label_summary_automation,
    s3_images,
)

__all__ = [
    "BATCH_TAG",
    "classify_images_job",
    "image_classifications",
    "label_summary",
    "label_summary_automation",
    "s3_images",
]
