import dagster as dg

#: One partition per S3 object, keyed by the escaped key relative to the prefix (ai_assets.keys).
images_partitions = dg.DynamicPartitionsDefinition(name="images")
