# Herald: `make run` starts the local stack, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
BROKERS := scripts/brokers.sh
KAFKA := scripts/kafka.sh

.PHONY: help run test lint unit bench chaos brokers-up brokers-down nisshi kafka build

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

build: ## Build every binary
	$(CARGO) build --workspace --bins

run: ## Run the local stack (embedded Kafka cluster, topics, stages) until Ctrl-C
	$(CARGO) run -q -p herald-cli --bin herald -- dev

lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

nisshi: ## Install the pinned nisshi broker into the cache (once)
	scripts/ensure-nisshi.sh >/dev/null

kafka: ## Fetch the pinned Apache Kafka with Maven into the cache (once)
	$(KAFKA) fetch

test: lint nisshi kafka ## Every test: lint, unit, broker and end-to-end (starts and stops its brokers)
	@set -euo pipefail; \
	trap '$(BROKERS) stop; $(KAFKA) stop' EXIT; \
	eval "$$($(BROKERS) start)"; \
	eval "$$($(KAFKA) start cluster)"; \
	echo "brokers: durable $$HERALD_TEST_DURABLE_BOOTSTRAP, fast $$HERALD_TEST_FAST_BOOTSTRAP, Apache Kafka (3 nodes) $$HERALD_TEST_KAFKA3_BOOTSTRAP"; \
	$(CARGO) test --workspace --no-fail-fast

chaos: nisshi ## The whole pipeline under crashes, outages and a broker restart: at 150 and at 1,000 events/s
	$(CARGO) build --release --workspace --bins
	HERALD_CHAOS_EVENTS=$${HERALD_CHAOS_EVENTS:-12000} HERALD_CHAOS_RATE=$${HERALD_CHAOS_RATE:-150} \
	  $(CARGO) test --release -p herald-tests --test e2e chaos -- --nocapture
	HERALD_CHAOS_EVENTS=20000 HERALD_CHAOS_RATE=1000 \
	  $(CARGO) test --release -p herald-tests --test e2e chaos -- --nocapture

bench: nisshi kafka ## Benchmarks; paste the tables into BENCHMARKS.md with commit and machine
	@echo "commit $$(git rev-parse --short HEAD), $$(nproc) cores, $$(free -g | awk '/Mem/{print $$2}') GiB"
	$(CARGO) run -q --release -p herald-router --example dedup_memory
	$(CARGO) run -q --release -p herald-router --example router_throughput
	$(CARGO) run -q --release -p herald-scaler --example scaling_sim
	$(CARGO) build -q --release -p herald-deliver --bin herald-deliver
	$(CARGO) run -q --release -p herald-deliver --example deliver_throughput
	$(CARGO) run -q --release -p herald-deliver --example deliver_latency
	$(CARGO) build -q --release --bins
	$(CARGO) run -q --release -p herald-tests --example pipeline_latency
	@set -euo pipefail; trap '$(KAFKA) stop single' EXIT; eval "$$($(KAFKA) start single)"; \
	for rate in 250 3000; do \
	  HERALD_BENCH_BROKER=kafka HERALD_BENCH_RATE=$$rate HERALD_BENCH_SECONDS=10 \
	    $(CARGO) run -q --release -p herald-tests --example pipeline_latency; \
	done; \
	HERALD_BENCH_BROKER=kafka HERALD_BENCH_RATE=250 HERALD_BENCH_SECONDS=10 HERALD_BENCH_BULK=60000 \
	  $(CARGO) run -q --release -p herald-tests --example pipeline_latency
	@set -euo pipefail; trap '$(KAFKA) stop cluster' EXIT; eval "$$($(KAFKA) start cluster)"; \
	for rate in 100 250; do \
	  HERALD_BENCH_BROKER=kafka3 HERALD_BENCH_RATE=$$rate HERALD_BENCH_SECONDS=10 \
	    $(CARGO) run -q --release -p herald-tests --example pipeline_latency; \
	done
