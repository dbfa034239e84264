"""``images_daily``: one partition per UTC day of the objects' LastModified, today included.

Object keys never become partition keys, so ten years are ~3,650 partitions however many
objects the bucket holds.
"""

import dagster as dg

from ai_assets.settings import start_date

images_daily = dg.DailyPartitionsDefinition(
    start_date=start_date().isoformat(), timezone="UTC", end_offset=1
)
