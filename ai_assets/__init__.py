"""ai_assets: an S3 prefix of images becomes a live table of AI classifications, with Dagster.

The code location is ``ai_assets.definitions``; its Dagster objects live under ``defs/``
(loaded by ``dg.load_from_defs_folder``), the pure logic in the modules beside it
(docs/architecture.md).
"""
