"""What a run's size costs: one run process per batch, at several batch sizes, side by side.

``AI_ASSETS_MAX_OBJECTS_PER_RUN`` trades what every run process spends whatever its size
(Python, Dagster, the code location, torch's and transformers' imports, the model, the
interpreter's exit) against how many runs a backlog spreads over. This bench runs real run
processes (``dagster api execute_run``, as Dagster's run launchers and a Kubernetes run pod
start them) over a backlog of JPEGs in a local SeaweedFS, results and Dagster's storage in a real
PostgreSQL (as the Helm chart deploys them), for the bundled model and a near-zero-compute one
(the pipeline's own work alone), each batch size in turn, round after round. A straight line
through the sizes' CPU gives the fixed CPU per run and the CPU per image; from it, the CPU per
image and the fixed share at other batch sizes.

Ends with: RESULT bundled_fixed_cpu_s=… bundled_cpu_ms_per_image=… … near_zero_… …
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from feed import BUCKET, corpus, near_zero_model, run_process
from local_s3 import local_s3
from report import print_figures


def fit(points: dict[int, list[float]]) -> tuple[float, float]:
    """Least squares through (size, CPU seconds of one run): fixed seconds, seconds per image."""
    pairs = [(size, cpu) for size, cpus in points.items() for cpu in cpus]
    mean_n = sum(n for n, _ in pairs) / len(pairs)
    mean_c = sum(c for _, c in pairs) / len(pairs)
    slope = sum((n - mean_n) * (c - mean_c) for n, c in pairs) / sum(
        (n - mean_n) ** 2 for n, _ in pairs
    )
    return mean_c - slope * mean_n, slope


def one_run(pg: Any, name: str, model: str, size: int, number: int) -> float:
    """One run of ``size`` objects in a run process of its own, Dagster's storage on
    PostgreSQL as the Helm chart deploys it; the process's CPU seconds."""
    import dagster as dg

    from ai_assets_dev.inprocess import InProcessDaemon
    from ai_assets_dev.localdev import dagster_storage

    os.environ.update(
        {"AI_ASSETS_MODEL": model, "AI_ASSETS_MAX_OBJECTS_PER_RUN": str(size),
         "AI_ASSETS_DATABASE_URL": pg.create_database(f"run{number}")}
    )  # fmt: skip
    storage = {"storage": dagster_storage(pg.create_database(f"dagster{number}"))}
    with dg.instance_for_test(overrides=storage) as instance:
        daemon = InProcessDaemon(instance, log_level="WARNING")
        request = (daemon.evaluate().run_requests or [])[0]  # a batch of `size`
        measured = run_process(daemon, request, size)
    print(
        f"{name}, a run of {size:,}: {measured['process_cpu_ms']:.2f} CPU ms "
        f"per image, {measured['process_img_s']:.0f} images/s",
        flush=True,
    )
    return measured["process_cpu_ms"] * size / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,5000", help="batch sizes run")
    parser.add_argument("--models", default="bundled,near_zero")
    parser.add_argument("--rounds", type=int, default=1, help="passes over every size")
    parser.add_argument(
        "--at", default="2000,5000,10000,20000", help="batch sizes to work out from the fit"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    assert len(set(sizes)) >= 2, "a line needs two sizes"

    from ai_assets.vision.convert import ensure_default_model
    from ai_assets_dev.localdev import postgres

    images = corpus(max(sizes))
    print(f"a backlog of {len(images):,} JPEGs of 384–640 px", flush=True)
    figures: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ai-assets-run-size-") as tmp,
        local_s3(Path(tmp) / "s3", BUCKET, images),
        postgres() as pg,
    ):
        bundled = ensure_default_model()
        models = {"bundled": str(bundled), "near_zero": near_zero_model(Path(tmp) / "m", bundled)}
        runs = 0
        cpu: dict[str, dict[int, list[float]]] = {
            m: {s: [] for s in sizes} for m in args.models.split(",")
        }
        for _ in range(args.rounds):
            for model, by_size in cpu.items():
                for size in sizes:
                    runs += 1
                    by_size[size].append(one_run(pg, model, models[model], size, runs))
    for model, by_size in cpu.items():
        fixed, per_image = fit(by_size)
        figures[f"{model}_fixed_cpu_s"] = fixed
        figures[f"{model}_cpu_ms_per_image"] = per_image * 1000
        for size, cpus in by_size.items():
            figures[f"{model}_measured_cpu_ms_at_{size}"] = sum(cpus) / len(cpus) * 1000 / size
        for size in map(int, args.at.split(",")):
            whole = fixed + per_image * size
            figures[f"{model}_fitted_cpu_ms_at_{size}"] = whole * 1000 / size
            figures[f"{model}_fixed_share_at_{size}"] = fixed / whole
    print_figures(figures)


if __name__ == "__main__":
    main()
