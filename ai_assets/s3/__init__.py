"""S3: listing a prefix in slices, fetching objects, object keys, S3 events and the SQS drain."""
