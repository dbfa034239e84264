import dagster as dg

from ai_assets.assets import label_summary

#: Keeps label_summary current: its eager condition fires after classification runs.
summary_automation_sensor = dg.AutomationConditionSensorDefinition(
    "summary_automation_sensor",
    target=[label_summary],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Re-computes label_summary after image_classifications changes.",
)
