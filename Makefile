# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Airflow runs from a project-local, git-ignored home; dags/, plugins/ and include/ come from here.
export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export PYTHONPATH := $(CURDIR)
export TF_CPP_MIN_LOG_LEVEL := 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

DEMO_DIR := $(CURDIR)/.demo
# Your own folders instead of the generated sample: DATA=DIR (DIR/dataset, DIR/queries,
# DIR/known_answers), or DATASET=, QUERIES=, KNOWN_ANSWERS= (each wins over DATA's sub-folder).
# Empty: the sample. Relative paths are relative to the directory make runs in.
demo_option = $(if $(strip $(2)),$(1) "$(strip $(2))")
DEMO_DATA_OPTIONS = $(call demo_option,--data,$(DATA)) $(call demo_option,--dataset,$(DATASET)) \
  $(call demo_option,--queries,$(QUERIES)) $(call demo_option,--known-answers,$(KNOWN_ANSWERS))

SANDBOX_PORT ?= 8911
SANDBOX_STATE ?= $(CURDIR)/.crowd/sandbox.sqlite
SANDBOX_WORKERS ?= diligent:6,careless:3,spammer:1

.PHONY: help install demo test test-stack lint unit benchmark benchmark-hits benchmark-crowd benchmark-scale benchmark-ann lock clean sandbox

help:
	@echo "make demo       generate sample data offline and run the image_similarity_mturk DAG on it"
	@echo "                (DATA=DIR, or DATASET=DIR QUERIES=DIR KNOWN_ANSWERS=DIR: on your own folders)"
	@echo "make test       lint and run the whole test suite"
	@echo "make test-stack the full Airflow stack (Celery, Postgres, Redis, triggerer) and its UI"
	@echo "make sandbox    start the local crowd sandbox (MTurk API + worker page) on 127.0.0.1:$(SANDBOX_PORT)"
	@echo "make benchmark  embedding throughput and recall (benchmarks/embedding.py)"
	@echo "make benchmark-hits  HIT creation rate and the sensor's wait (benchmarks/hits.py)"
	@echo "make benchmark-crowd crowd accuracy vs truth: fixed-3/5 vs adaptive, 30/50% bad workers (benchmarks/crowd_quality.py)"
	@echo "make benchmark-scale sharded embedding on 1 vs 2 Celery workers, top-k at 1e5/1e6 in memory and 1e6/1e7 sharded from disk, the DAG search tasks at 1e6, a wait poll over 10,000 HITs, re-ranking before/after (benchmarks/scale.py)"
	@echo "make benchmark-ann   approximate search (faiss IVF-Flat, IVF-SQ8, HNSW) vs the exact top-k: build, search, recall@3, memory (benchmarks/ann.py)"
	@echo "make lock       re-resolve constraints.txt from requirements*.txt"

$(STAMP): requirements.txt requirements-test.txt constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-test.txt -c constraints.txt
	touch $@

install: $(STAMP)

$(AIRFLOW_HOME)/airflow.db: | $(STAMP)
	mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate >$(AIRFLOW_HOME)/db-migrate.log 2>&1 || { cat $(AIRFLOW_HOME)/db-migrate.log; exit 1; }

demo: $(STAMP) $(AIRFLOW_HOME)/airflow.db
	$(BIN)/python -m include.demo.runner run --demo-dir $(DEMO_DIR) $(DEMO_DATA_OPTIONS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: $(STAMP)
	# pytest exits 5 when it collects no test: that is a failure here, not a pass.
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test: lint unit

# The full stack as real processes: Postgres, Redis, api-server, scheduler, dag-processor,
# triggerer, Celery worker, moto S3, the crowd sandbox; the UI in headless Chromium
# (screenshots and service logs in .artifacts/stack/). Starts what is not running.
test-stack: $(STAMP)
	$(BIN)/python -m pytest -m stack tests/stack $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

sandbox: $(STAMP)
	$(BIN)/python -m include.crowd_sandbox --port $(SANDBOX_PORT) --state $(SANDBOX_STATE) \
	  --workers $(SANDBOX_WORKERS)

benchmark: $(STAMP)
	$(BIN)/python benchmarks/embedding.py

benchmark-hits: $(STAMP)
	$(BIN)/python benchmarks/hits.py

benchmark-crowd: $(STAMP)
	$(BIN)/python benchmarks/crowd_quality.py

benchmark-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py

benchmark-ann: $(STAMP)
	$(BIN)/python benchmarks/ann.py

lock:
	rm -rf $(CURDIR)/.lock-venv
	$(PYTHON) -m venv $(CURDIR)/.lock-venv
	$(CURDIR)/.lock-venv/bin/python -m pip install --quiet -r requirements.txt -r requirements-test.txt
	{ echo "# Full lock of every installed package (runtime + test tools), applied as \`-c constraints.txt\`."; \
	  echo "# Regenerate with \`make lock\` after changing requirements.txt or requirements-test.txt."; \
	  $(CURDIR)/.lock-venv/bin/python -m pip freeze; } > constraints.txt
	rm -rf $(CURDIR)/.lock-venv

clean:
	rm -rf $(VENV) $(AIRFLOW_HOME) $(DEMO_DIR) .cache .crowd
