"""Evaluate s3_image_sensor and run what it requests in this process, in the daemon's order.

``make demo-once``, the tests and the benchmarks use it to drive the code location without a
daemon: report the tick's asset events, add its partitions, execute its runs, keep the cursor.
"""

from __future__ import annotations

import dataclasses

import dagster as dg

from ai_assets.definitions import build_defs
from ai_assets.sensors import s3_image_sensor


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

    def apply_events_and_partitions(self, result: dg.SensorResult) -> None:
        """What the daemon does before launching runs: report events, add partitions."""
        for event in result.asset_events or []:
            self.instance.report_runless_asset_event(event)
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(
                    request.partitions_def_name, request.partition_keys
                )

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def("classify_images_job")
        return job.execute_in_process(
            instance=self.instance,
            tags=dict(request.tags),
            partition_key=request.partition_key,
            run_config={"loggers": {"console": {"config": {"log_level": self.log_level}}}},
            raise_on_error=False,
        )

    def tick(self) -> tuple[dg.SensorResult, list[dg.ExecuteInProcessResult]]:
        """A whole tick: evaluate, apply, run every request, then save the cursor."""
        result = self.evaluate()
        self.apply_events_and_partitions(result)
        runs = [self.launch(request) for request in result.run_requests or []]
        self.cursor = result.cursor
        return result, runs
