"""Images: the daily partitions, the assets and their checks, the job, the sensors."""
