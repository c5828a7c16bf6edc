# Quick start: `make run` (the service) and `make test` (every test).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: prometheus chromium python-venv asyncapi-parser mermaid-parser schemas test-via-api run test soak bench bench-quick bench-timers cluster-test shutdown-test fault-tests demo services build migrate verify fmt clippy rabbitmq-definitions

## run: start PostgreSQL/RabbitMQ if stopped, then run the coordinator (Ctrl-C stops it)
run: services
	$(CARGO) run --release -p coordinator --bin coordinator -- serve

## test: every test (unit and integration) against the local PostgreSQL and RabbitMQ;
## then, one at a time, the fault-injection tests (on a cluster and a node of their own)
test: services prometheus chromium python-venv asyncapi-parser mermaid-parser
	COORDINATOR_ENV=test $(CARGO) test --workspace --features coordinator/fail-points --lib --bins --tests
	COORDINATOR_ENV=test $(CARGO) test -p coordinator --features fail-points --test faults -- --ignored --test-threads=1

## test-via-api: the tests (not the fault phase) with vhosts, queue listings, definitions
## and connections handled through RabbitMQ's management API, as against a remote broker
test-via-api: services prometheus chromium python-venv asyncapi-parser mermaid-parser
	rabbitmq-plugins enable rabbitmq_management >/dev/null
	@for _ in $$(seq 30); do (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null && break; sleep 1; done
	COORDINATOR_ENV=test COORDINATOR_TEST_RABBITMQ_API=http://guest:guest@127.0.0.1:15672 \
	COORDINATOR_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/postgres \
	COORDINATOR_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672 \
	$(CARGO) test --workspace --features coordinator/fail-points --lib --bins --tests

## prometheus: Debian's prometheus package (promtool and the server), for the alert
## rules' tests and the test that has a real Prometheus scrape a coordinator
prometheus:
	@command -v promtool >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null

## chromium: Debian's chromium and its chromedriver, for the dashboard's browser test
chromium:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null

## python-venv: a virtualenv (from PyPI) with the example Python agent's packages, for
## its interop test, the OpenAPI validator, for the read API's test, Selenium, for the
## dashboard's, and the OpenTelemetry protobuf classes, for the OTLP receiver's
VENV := target/python-venv
python-venv: $(VENV)/.installed
$(VENV)/.installed: examples/python/requirements.txt crates/coordinator/tests/api/requirements.txt crates/coordinator/tests/dashboard/requirements.txt crates/coordinator/tests/otlp/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(addprefix -r ,$^)
	touch $@

# A pinned npm package (its package.json and lock file) installed into the target's
# folder with `npm ci`; the target is that folder's .installed stamp.
define npm-ci
	mkdir -p $(@D)
	cp $^ $(@D)/
	cd $(@D) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@
endef

## asyncapi-parser: the AsyncAPI project's parser (from npm, pinned by its lock file), for
## the test that docs/asyncapi.yaml parses without an error
ASYNCAPI := target/asyncapi
asyncapi-parser: $(ASYNCAPI)/.installed
$(ASYNCAPI)/.installed: crates/coordinator/tests/asyncapi/package.json crates/coordinator/tests/asyncapi/package-lock.json
	$(npm-ci)

## mermaid-parser: Mermaid's own parser (from npm, pinned by its lock file), for the
## test that the workflow diagrams (`coordinator workflow graph`) parse
MERMAID := target/mermaid
mermaid-parser: $(MERMAID)/.installed
$(MERMAID)/.installed: crates/coordinator/tests/mermaid/package.json crates/coordinator/tests/mermaid/package-lock.json
	$(npm-ci)

## schemas: regenerate docs/schemas/ and protocol.md's payload fields from the Rust types (then review the diff)
schemas:
	UPDATE_SCHEMAS=1 $(CARGO) test -p coordinator-protocol --test schemas -- the_json_schemas the_payload_fields

## demo: the coordinator and simulated agents, three workflows and an emergency in compressed time
demo: services
	$(CARGO) build --release -p coordinator --bins
	$(CARGO) run --release -p demo

## bench: the load scenarios, closed loop and timer workload, default and production settings (docs/performance.md)
bench: services
	$(CARGO) build --release -p coordinator -p loadgen --bins
	target/release/loadgen bench

## bench-quick: the same with 15-second windows
bench-quick: services
	$(CARGO) build --release -p coordinator -p loadgen --bins
	target/release/loadgen bench --quick

## bench-timers: the timer service alone (10,000 clocks due in one minute; again with 1,000,000 armed)
bench-timers: services
	$(CARGO) bench -p coordinator --bench timers

## soak: SOAK_MINUTES (10) at 1,000 agent messages/s with one fault a minute (docs/operations.md),
## on a PostgreSQL cluster and a RabbitMQ node of its own (the machine's are never stopped)
soak: services
	$(CARGO) build --release -p coordinator -p loadgen --bins
	target/release/loadgen soak

## cluster-test: two coordinators on a three-node RabbitMQ cluster of its own (quorum
## queues, rate limits on) under load; the node leading most inbox partitions is stopped
## and started again; nothing may be lost, applied twice or fire twice, and messages held
## back by a rate limit are applied in order after (~4 minutes, not in make test; figures
## in target/cluster/report.md)
cluster-test: services
	$(CARGO) build --release -p coordinator --bin coordinator
	COORDINATOR_ENV=test $(CARGO) test --release -p loadgen --test cluster -- --ignored --nocapture

## shutdown-test: SIGTERM right after every fault the soak injects, three rounds, two
## coordinators under 1,000 msg/s on services of its own; every shutdown exits 0 within
## shutdown.timeout, nothing lost or applied twice (~4 minutes; target/shutdown/report.md)
shutdown-test: services
	$(CARGO) build --release -p coordinator --bin coordinator
	COORDINATOR_ENV=test $(CARGO) test --release -p loadgen --test shutdown -- --ignored --nocapture

## fault-tests: what .ci/run runs after `make test`: the cluster test, the shutdown test
## and a soak of FAULT_SOAK_MINUTES (6: each of its five faults once) with a fault a minute
FAULT_SOAK_MINUTES ?= 6
fault-tests: services
	$(CARGO) build --release -p coordinator -p loadgen --bins
	COORDINATOR_ENV=test $(CARGO) test --release -p loadgen --test cluster --test shutdown -- --ignored --nocapture --test-threads=1
	target/release/loadgen soak --minutes $(FAULT_SOAK_MINUTES)

## services: start PostgreSQL and RabbitMQ if installed but stopped
services:
	@scripts/ensure-services.sh

build:
	$(CARGO) build --release --workspace

migrate: services
	$(CARGO) run --release -p coordinator --bin coordinator -- migrate

## verify: formatting, lints (with the test-only fail points compiled in) and every test; CI runs this
verify: fmt clippy test

fmt:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets --features coordinator/fail-points -- -D warnings

## rabbitmq-definitions: load rabbitmq/definitions.json into the local broker
rabbitmq-definitions: services
	rabbitmqctl import_definitions rabbitmq/definitions.json
