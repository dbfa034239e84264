"""Operating the pipeline: the Prometheus exporter; Dagster's storage as the chart deploys it."""
