"""The model as an HTTP service (app, routes, dynamic batching, metrics) and its client."""
