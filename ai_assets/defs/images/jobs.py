"""The classification job and the names other Dagster glue (sensors, Slack) knows it by."""

import os

import dagster as dg

from ai_assets.k8s import classification_run_tags

#: Set by s3_image_sensor on each run it requests: the run classifies exactly that batch.
BATCH_TAG = "ai_assets/batch"
#: The sensor that requests the job's runs (sensor.py); the exporter reads its ticks.
SENSOR_NAME = "s3_image_sensor"
#: The asset the job materializes (defined in assets.py).
CLASSIFICATIONS = dg.AssetKey("image_classifications")

classify_images_job = dg.define_asset_job(
    "classify_images_job",
    selection=[CLASSIFICATIONS],
    description=(
        "Classify one day's images into the results table: the sensor's batch when the run has "
        "the ai_assets/batch tag, else every object of the day that is not current."
    ),
    tags=classification_run_tags(os.environ),
    # One step: the multiprocess default would start a second Python in every run (its pod
    # included) that imports Dagster and the code location again, ~2-3 s of CPU per run
    # (bench/feed.py's process figures). Interrupts: see assets._stops_when_interrupted.
    executor_def=dg.in_process_executor,
)
