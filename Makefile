# Two entry points: `make demo` (or `make demo-once`) and `make test`. Everything installs into .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export MALLOC_MMAP_THRESHOLD_ ?= 1073741824
export MALLOC_TRIM_THRESHOLD_ ?= 1073741824
export HF_HUB_OFFLINE := 1
export DAGSTER_EVENT_BATCH_SIZE ?= 1000

.PHONY: install install-demo demo demo-once demo-clean serve test test-fast lint model browser prometheus reliability bench bench-latency bench-sqs bench-run-size gpu-wheels screenshots clean

# the demo needs only the package and its demo extra; make test adds the dev tooling
$(VENV)/.installed-demo: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a looser spec resolves to a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed: $(VENV)/.installed-demo
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install-demo: $(VENV)/.installed-demo

install: $(VENV)/.installed

model: install-demo
	$(PY) -m ai_assets.vision.convert

demo: model
	$(PY) -m ai_assets_dev.demo

demo-once: model
	$(PY) -m ai_assets_dev.demo --once

# the model as a service on 127.0.0.1:8000 (README, Model service); runs use it when
# AI_ASSETS_INFERENCE_URL=http://127.0.0.1:8000 is set
serve: model
	$(PY) -m uvicorn ai_assets.model_service:app --host 127.0.0.1 --port 8000

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/basedpyright
	$(VENV)/bin/lint-imports
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/dg check defs

# Debian's Chromium and ChromeDriver for the UI test (installed when missing and root, as in CI)
browser:
	@command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium chromium-driver >/dev/null \
	      || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } \
	      || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "chromium-driver is missing: the browser test will be skipped"; fi; }

# Debian's Prometheus and promtool for the monitoring tests (installed when missing and root)
prometheus:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q prometheus >/dev/null \
	      || { apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null; } \
	      || echo "could not install prometheus: the monitoring tests will be skipped"; \
	  else echo "prometheus is missing: the monitoring tests will be skipped"; fi; }

# two workers: most tests wait on servers and subprocesses, so CI's two cores overlap them
test: install lint model browser prometheus
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15

# the tests that need no server: pure logic, SQLite, in-process Dagster (under a minute)
test-fast: install model
	$(PY) -m pytest -q -m "not integration"

reliability: install model
	$(PY) -m pytest -m reliability -q

# refresh the README's screenshots (docs/ui-*.png, docs/prometheus-objects.png); make test writes them elsewhere
screenshots: install model browser prometheus
	AI_ASSETS_TEST_SCREENSHOTS_DIR=docs $(PY) -m pytest -q ai_assets_tests/e2e/test_ui.py

# the feed (the run's own CPU per image around a near-zero model), then the whole-path throughput
bench: install model
	$(PY) bench/feed.py
	$(PY) bench/throughput.py

# the demo's upload → row latency: the real demo, 10 photos uploaded with boto3 (~6 min)
bench-latency: install model
	$(PY) bench/upload_to_row.py

bench-sqs: install
	$(PY) bench/sqs_drain.py

# what a run's size costs: whole run processes of 1,000-5,000 objects, two models (~10 min)
bench-run-size: install model
	$(PY) bench/run_size.py

# what bench/gpu.sh needs on a GPU machine without a registry (CPython 3.12 with torch,
# torchvision and transformers already there): this venv's versions as wheels in .whl/, and
# for its S3 stage in .whl-s3/ with the SeaweedFS binary (xz: a call carries at most 64 MiB);
# carry .whl and ai_assets/.cache (the converted model) with the repo, then .whl-s3
GPU_WHEELS := simplejpeg sqlalchemy greenlet botocore jmespath transformers regex
GPU_S3_WHEELS := obstore boto3 s3transfer
WHEELS_312 := $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64
PINNED := $(PY) -c 'import sys, importlib.metadata as m; print(*(f"{n}=={m.version(n)}" for n in sys.argv[1:]))'
gpu-wheels: install model
	rm -rf .whl .whl-s3
	$(WHEELS_312) -d .whl $$($(PINNED) $(GPU_WHEELS))
	$(WHEELS_312) -d .whl-s3 $$($(PINNED) $(GPU_S3_WHEELS))
	xz -T0 -6 -c $(VENV)/bin/weed > .whl-s3/weed.xz
	du -sh .whl .whl-s3 ai_assets/.cache

# the demo's bucket, database and Dagster home: the next `make demo` starts from the samples
demo-clean:
	rm -rf .demo

clean:
	rm -rf $(VENV) .cache .demo .dagster_home
