"""The asset graph: S3 objects → classifications in the results table → a label summary."""

import collections
import os
import time
from typing import Any

import dagster as dg

from ai_assets import table
from ai_assets.classify import Job, classify_objects
from ai_assets.k8s import classification_run_tags
from ai_assets.keys import object_key_for
from ai_assets.partitions import images_partitions
from ai_assets.resources import ClassifierResource, ImageBucket, ResultsDatabase
from ai_assets.store import fetch_object

GROUP = "images"
OWNERS = ["team:ml-platform"]
TAGS = {"domain": "vision"}
#: Runs of at most this many partitions also get label/score metadata on each partition.
#: Dagster re-reads the whole dynamic partition list for every per-partition call, so large
#: runs rely on the run-level metadata and the table instead.
PARTITION_METADATA_LIMIT = 25
#: Above this share of error rows the error-rate check warns.
MAX_ERROR_RATE = 0.05

s3_images = dg.AssetSpec(
    "s3_images",
    description=(
        "Images under the watched S3 prefix, one partition per object. s3_image_sensor records "
        "each new object version (its ETag is the partition's data version)."
    ),
    partitions_def=images_partitions,
    group_name=GROUP,
    kinds={"s3"},
    owners=OWNERS,
    tags=TAGS,
)


def column_schema() -> dg.TableSchema:
    """The results table's columns, from its SQLAlchemy definition (one source of truth)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=column.name,
                type=str(column.type).lower(),
                description=column.comment,
                constraints=dg.TableColumnConstraints(
                    nullable=column.nullable is not False, unique=column.primary_key
                ),
            )
            for column in table.image_classifications.columns
        ]
    )


SCORES_ARE_PROBABILITIES = "scores_are_probabilities"
ONE_ROW_PER_PARTITION = "one_row_per_partition"
ERROR_RATE_BELOW_THRESHOLD = "error_rate_below_threshold"


@dg.asset(
    deps=[s3_images],
    partitions_def=images_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    owners=OWNERS,
    tags=TAGS,
    metadata={
        "dagster/column_schema": column_schema(),
        "dagster/table_name": table.image_classifications.name,
    },
    # a database restart or an S3 outage longer than botocore's retries: the whole step
    # re-runs (upserts are idempotent), then the run fails with the error
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    group_name=GROUP,
    kinds={"pytorch", "postgres"},
    check_specs=[
        dg.AssetCheckSpec(
            SCORES_ARE_PROBABILITIES,
            asset="image_classifications",
            description="Every top-1 score of a classified image lies in [0, 1].",
        ),
        dg.AssetCheckSpec(
            ONE_ROW_PER_PARTITION,
            asset="image_classifications",
            description="Every partition of the run has exactly one current row.",
        ),
        dg.AssetCheckSpec(
            ERROR_RATE_BELOW_THRESHOLD,
            asset="image_classifications",
            description=f"At most {MAX_ERROR_RATE:.0%} of the run's objects failed to classify.",
        ),
    ],
)
def image_classifications(
    context: dg.AssetExecutionContext,
    s3: ImageBucket,
    classifier: ClassifierResource,
    results_db: ResultsDatabase,
) -> dg.MaterializeResult:
    """One row per object in the `image_classifications` table: top-k ImageNet labels.

    A run handles a whole range of partitions: objects are fetched concurrently, decoded and
    classified in batches, and upserted one transaction per batch.
    """
    engine = results_db.get_engine()
    model = classifier.load()  # once per process; not part of the images/s figure
    client = s3.get_client()
    started = time.perf_counter()
    jobs = [Job(key, object_key_for(key, s3.prefix)) for key in context.partition_keys]
    context.log.info(f"classifying {len(jobs)} objects with {model.model_id} on {model.device}")

    statuses: collections.Counter[str] = collections.Counter()
    labels: collections.Counter[str] = collections.Counter()
    batches = classify_objects(
        jobs,
        lambda key: fetch_object(client, s3.bucket, key, classifier.max_image_bytes),
        model,
        batch_size=classifier.batch_size,
        top_k=classifier.top_k,
        max_pixels=classifier.max_image_pixels,
        concurrency=classifier.download_concurrency,
        run_id=context.run.run_id,
    )
    for rows in batches:
        table.upsert_rows(engine, rows)
        statuses.update(row.status for row in rows)
        labels.update(row.label for row in rows if row.label)
        for row in rows:
            if len(jobs) <= PARTITION_METADATA_LIMIT:
                context.add_asset_metadata(partition_metadata(row), partition_key=row.partition_key)
            if row.status == "error":
                context.log.warning(f"{row.s3_key!r}: {row.error}")
    elapsed = time.perf_counter() - started

    audit = table.audit(engine, [job.object_key for job in jobs])
    classified = statuses["ok"] + statuses["error"]
    error_rate = statuses["error"] / classified if classified else 0.0
    return dg.MaterializeResult(
        metadata={
            "images": dg.MetadataValue.int(len(jobs)),
            "classified": dg.MetadataValue.int(statuses["ok"]),
            "errors": dg.MetadataValue.int(statuses["error"]),
            "deleted": dg.MetadataValue.int(statuses["deleted"]),
            "images_per_second": dg.MetadataValue.float(round(len(jobs) / elapsed, 2)),
            "top_labels": dg.MetadataValue.json(dict(labels.most_common(10))),
            "model_id": dg.MetadataValue.text(model.model_id),
            "model_revision": dg.MetadataValue.text(model.model_revision),
            "device": dg.MetadataValue.text(model.device),
            "precision": dg.MetadataValue.text(model.precision),
            "batchnorms_folded": dg.MetadataValue.int(model.folded),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=SCORES_ARE_PROBABILITIES,
                passed=audit.bad_scores == 0,
                metadata={"rows_with_bad_scores": audit.bad_scores},
            ),
            dg.AssetCheckResult(
                check_name=ONE_ROW_PER_PARTITION,
                passed=audit.present == audit.expected,
                metadata={"expected": audit.expected, "present": audit.present},
            ),
            dg.AssetCheckResult(
                check_name=ERROR_RATE_BELOW_THRESHOLD,
                passed=error_rate <= MAX_ERROR_RATE,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"error_rate": round(error_rate, 4), "errors": audit.errors},
            ),
        ],
    )


def partition_metadata(row: table.ClassificationRow) -> dict[str, Any]:
    """What one partition's materialization shows in the UI."""
    metadata: dict[str, Any] = {"status": row.status, "etag": row.etag or ""}
    if row.label is not None and row.score is not None:
        metadata |= {"label": row.label, "score": dg.MetadataValue.float(round(row.score, 4))}
    if row.error:
        metadata["error"] = row.error
    return metadata


@dg.asset(
    deps=[image_classifications],
    owners=OWNERS,
    tags=TAGS,
    group_name=GROUP,
    kinds={"postgres"},
)
def label_summary(results_db: ResultsDatabase) -> dg.MaterializeResult:
    """Label counts, error counts and model versions over the whole table, computed in SQL."""
    engine = results_db.get_engine()
    labels = table.label_counts(engine)
    statuses = table.status_counts(engine)
    models = table.model_versions(engine)
    rows = "\n".join(f"| {_md(label)} | {count} |" for label, count in labels)
    recent = "\n".join(_recent_line(row) for row in table.recent_rows(engine))
    return dg.MaterializeResult(
        metadata={
            "objects": dg.MetadataValue.int(sum(statuses.values())),
            "classified": dg.MetadataValue.int(statuses.get("ok", 0)),
            "errors": dg.MetadataValue.int(statuses.get("error", 0)),
            "deleted": dg.MetadataValue.int(statuses.get("deleted", 0)),
            "labels": dg.MetadataValue.md(f"| label | images |\n|---|---|\n{rows}"),
            "recent_results": dg.MetadataValue.md(
                f"| object | label | score | classified |\n|---|---|---|---|\n{recent}"
            ),
            "models": dg.MetadataValue.json(
                [{"model_id": m, "revision": r, "rows": n} for m, r, n in models]
            ),
        }
    )


def _recent_line(row: dict) -> str:
    score = "" if row["score"] is None else f"{row['score']:.3f}"
    when = f"{row['classified_at']:%Y-%m-%d %H:%M}"
    return f"| `{_md(row['s3_key'])}` | {_md(row['label'] or row['status'])} | {score} | {when} |"


def _md(text: str) -> str:
    """Keep object keys and labels from breaking a Markdown table."""
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")


classify_images_job = dg.define_asset_job(
    "classify_images_job",
    # label_summary runs once per run, after the partitions: the summary is always current
    selection=[image_classifications, label_summary],
    description="Classify a range of image partitions into the results table, then summarise.",
    tags=classification_run_tags(os.environ),
)
