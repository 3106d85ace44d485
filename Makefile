# Switchboard — every target runs from a fresh clone after `make setup`.
VENV   := .venv
PY     := $(VENV)/bin/python
BUF    := .tools/node/node_modules/.bin/buf
CONFIG ?=
PROCESSORS ?=

.PHONY: setup run test unit proto check-gen lint lock bench bench-delivery clean

setup:            ## install everything: venv, Envoy, Cassandra, RabbitMQ (if missing), buf
	scripts/setup.sh

run:              ## start the whole platform on the local default (data under var/); Ctrl-C stops it
	$(VENV)/bin/switchboard stack up $(if $(CONFIG),--config $(CONFIG)) $(if $(PROCESSORS),--processors $(PROCESSORS))

test: lint check-gen  ## lint, generated-code check, unit + integration + end-to-end tests
	$(PY) -m pytest -q

unit:             ## only the tests that need no running component
	$(PY) -m pytest -q tests/unit

proto:            ## regenerate gen/ from proto/
	$(BUF) lint
	scripts/gen_proto.sh

check-gen:        ## fail if gen/ differs from what proto/ generates
	scripts/check_gen.sh

lint:             ## buf lint, ruff, mypy, architecture contracts (import-linter), Prometheus rules (promtool)
	$(BUF) lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	promtool check rules prometheus/rules.yml
	promtool test rules prometheus/rules_test.yml

lock:             ## rewrite constraints.txt (the versions setup installs) from .venv, after the tests passed on it
	{ sed -n '/^#/p' constraints.txt; $(VENV)/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

bench:            ## full-path benchmark, load from wrk: HTTPS -> Envoy -> ingest -> RabbitMQ -> processor -> Cassandra
	$(PY) -m bench.pipeline $(BENCH_ARGS)

bench-delivery:   ## outbound benchmark: fan-out 1, 3, 10 at 200 events/s to a native HTTPS receiver (a second Envoy)
	$(PY) -m bench.delivery $(BENCH_ARGS)

clean:            ## remove local data (var/); keeps installed tools
	rm -rf var/
