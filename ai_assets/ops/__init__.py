"""Operating the pipeline: the Prometheus exporter."""
