"""Evaluate s3_image_sensor and run what it requests in this process, in the daemon's order.

``make demo-once``, the tests and the benchmarks use it to drive the code location without a
daemon: report the tick's asset events, launch its runs (skipping run keys that already have a
run, as the daemon does), then keep the cursor. ``run_process_command`` gives a request's run
the process a run launcher would start instead.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._grpc.types import ExecuteRunArgs

from ai_assets.definitions import build_defs
from ai_assets.defs.images.sensor import s3_image_sensor

RUN_KEY_TAG = "dagster/run_key"
JOB = "classify_images_job"


@dataclasses.dataclass
class InProcessDaemon:
    instance: dg.DagsterInstance
    defs: dg.Definitions = dataclasses.field(default_factory=build_defs)
    cursor: str | None = None
    log_level: str = "INFO"

    def evaluate(self) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.defs.resources
        )
        result = s3_image_sensor(context)
        if not isinstance(result, dg.SensorResult):
            raise TypeError(f"s3_image_sensor returned {type(result).__name__}")
        return result

    def report_events(self, result: dg.SensorResult) -> None:
        """What the daemon does first with a tick's result: record its asset events."""
        for event in result.asset_events or []:
            self.instance.report_runless_asset_event(event)

    def has_run(self, run_key: str) -> bool:
        return bool(self.instance.get_run_ids(dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1))

    def launch(
        self, request: dg.RunRequest, run_config: dict | None = None
    ) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(JOB)
        tags = dict(request.tags) | ({RUN_KEY_TAG: request.run_key} if request.run_key else {})
        return job.execute_in_process(
            instance=self.instance,
            tags=tags,
            partition_key=request.partition_key,
            run_config={
                **(run_config or {}),
                "loggers": {"console": {"config": {"log_level": self.log_level}}},
            },
            raise_on_error=False,
        )

    def run_process_command(
        self, request: dg.RunRequest, run_config: dict | None = None
    ) -> tuple[str, list[str]]:
        """A run for ``request`` in the instance, and the command that executes it in a process
        of its own: ``dagster api execute_run``, what Dagster's run launchers start (a
        Kubernetes run pod included)."""
        root = str(Path(__file__).resolve().parents[1])
        origin = ReconstructableRepository.for_module("ai_assets.definitions", "defs", root)
        job = origin.get_reconstructable_job(JOB)  # where the run process loads it from
        job_def = self.defs.resolve_job_def(JOB)  # loaded here already
        tags = dict(request.tags)
        if request.partition_key:
            tags["dagster/partition"] = request.partition_key
        run = self.instance.create_run_for_job(
            job_def=job_def,
            run_config=run_config,
            tags=tags,
            job_code_origin=job.get_python_origin(),
            asset_selection=frozenset(job_def.asset_layer.executable_asset_keys),
        )
        args = ExecuteRunArgs(job.get_python_origin(), run.run_id, self.instance.get_ref())
        entry_point, *rest = args.get_command_args()
        assert entry_point == "dagster", entry_point
        return run.run_id, [sys.executable, "-m", "dagster", *rest]  # this environment's

    def tick(self) -> tuple[dg.SensorResult, list[dg.ExecuteInProcessResult]]:
        """A whole tick: evaluate, report events, run every new run key, then save the cursor."""
        result = self.evaluate()
        self.report_events(result)
        runs = [
            self.launch(request)
            for request in result.run_requests or []
            if not (request.run_key and self.has_run(request.run_key))
        ]
        self.cursor = result.cursor
        return result, runs
