# Developer and CI entry points. `make test` is what CI runs (via .ci/run).
CARGO ?= cargo

.PHONY: all services run migrate test lint fmt fmt-check clippy unit client-js e2e bench chaos chaos-short fuzz cluster-test

all: test

services:
	bash scripts/ensure-services.sh

run: services
	$(CARGO) run --release --bin switchboard -- serve

migrate: services
	$(CARGO) run --release --bin switchboard -- migrate

test: services
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	bash scripts/client-js.sh
	bash scripts/e2e.sh
	bash scripts/chaos.sh --short
	$(MAKE) cluster-test

# The scale-out test (tests/it/scale.rs) on a 3-node RabbitMQ cluster beside the machine's own
# broker: starts the cluster (scripts/rabbitmq-cluster.sh), runs the test, stops the cluster
# whatever the outcome.
cluster-test: services
	bash scripts/rabbitmq-cluster.sh start
	status=0; $(CARGO) test -p switchboard --features cluster-test --test it scale:: || status=$$?; \
	bash scripts/rabbitmq-cluster.sh stop; exit $$status

lint: fmt-check clippy

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: services
	$(CARGO) test --workspace

# The web client (clients/js): build (prints its size) and unit tests; its browser tests are in e2e.
client-js:
	bash scripts/client-js.sh

e2e: services
	bash scripts/e2e.sh

# The standard benchmark set against a fresh release build (BENCHMARKS.md); not part of `test`.
bench: services
	bash scripts/bench.sh

# The full chaos run (RELIABILITY.md): 1,000,000 events through two gateways and two workers
# while faults are injected; not part of `test`, which runs the short one (about 70 s, 60,000
# events, every fault once).
chaos: services
	bash scripts/chaos.sh

chaos-short: services
	bash scripts/chaos.sh --short

# Every cargo-fuzz target (fuzz/) for FUZZ_SECONDS each (default 60), one after the other;
# installs cargo-fuzz when missing (RELIABILITY.md); not part of `test`.
fuzz:
	bash scripts/fuzz.sh
