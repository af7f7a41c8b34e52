# kichat: the two commands a fresh clone needs, and a few more.
#
#   make demo     the gateway on the built-in Kick simulator, live chat in the terminal
#   make test     lint, types, and the whole test-suite (what CI runs)
#
#   make serve    the gateway against real Kick (ARGS="--port 3000 ...")
#   make assets   socket.io-client for the gateway's overlay page (npm ci, not committed)
#   make bench    the fan-out benchmark, project and Node.js peer side by side (see bench/)
#   make conformance SUITE=<dir>   the official Socket.IO protocol suite against our fixture
#   make autobahn  Autobahn|Testsuite (WebSocket conformance) against kichat.http (needs Python 2.7)
#
# Everything installs into .venv (Python: kichat and its runtime dependencies for demo and serve,
# the test tools too for test), src/kichat/web/assets/node_modules (socket.io-client, served at
# /socket.io/socket.io.js), tests/js/node_modules (the JS test clients) and
# examples/node-*/node_modules (the Node examples, which the tests run).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.kichat-runtime
STAMP := $(VENV)/.kichat-installed
JS_STAMP := tests/js/node_modules/.kichat-installed
EXAMPLE_STAMPS := examples/node-esm/node_modules/.kichat-installed examples/node-cjs/node_modules/.kichat-installed
ASSETS := src/kichat/web/assets
ASSETS_STAMP := $(ASSETS)/node_modules/.kichat-installed

.PHONY: demo serve assets test lint typecheck pytest bench bench-results conformance autobahn clean

# What demo and serve need: kichat and its runtime dependencies only.
$(RUNTIME_STAMP): pyproject.toml
	@echo "== creating $(VENV) with kichat and its runtime dependencies (first time only, ~20 s)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $@
	@echo "== installed: $(VENV)/bin/kichat (source $(VENV)/bin/activate to have kichat on PATH)"

# What the tests need besides: pytest, mypy, ruff, python-socketio, ...
$(STAMP): $(RUNTIME_STAMP) pyproject.toml
	@echo "== installing the test tools into $(VENV) (pytest, mypy, ruff, python-socketio, ...)"
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund
	@touch $@

examples/%/node_modules/.kichat-installed: examples/%/package.json examples/%/package-lock.json
	npm ci --prefix examples/$* --no-audit --no-fund
	@touch $@

$(ASSETS_STAMP): $(ASSETS)/package.json $(ASSETS)/package-lock.json
	npm ci --prefix $(ASSETS) --no-audit --no-fund
	@touch $@

assets: $(ASSETS_STAMP)

# The demo needs the runtime and the overlay's socket.io-client, not the test tools.
demo: $(RUNTIME_STAMP) $(ASSETS_STAMP)
	$(VENV)/bin/kichat demo $(ARGS)

serve: $(RUNTIME_STAMP) $(ASSETS_STAMP)
	$(VENV)/bin/kichat serve $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP) $(JS_STAMP) $(ASSETS_STAMP) $(EXAMPLE_STAMPS)
	$(PY) -m pytest $(ARGS)
	# The core server again on the standard library's event loop (the suite runs on uvloop).
	KICHAT_TEST_LOOP=asyncio $(PY) -m pytest -q tests/http tests/sio

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) bench/run.py $(ARGS)

bench-results: $(STAMP)
	$(PY) bench/run.py --write-results $(ARGS)

# SUITE: a checkout of socketio/socket.io-protocol's test-suite/ (or socket.io's
# docs/socket.io-protocol/v5-test-suite/) with `npm ci` done in it.
conformance: $(STAMP)
	@test -n "$(SUITE)" || (echo "usage: make conformance SUITE=path/to/test-suite" && exit 2)
	$(PY) -m kichat.sio.conformance --port 3000 $(FIXTURE_ARGS) & pid=$$!; \
	  sleep 1; (cd "$(SUITE)" && npx mocha test-suite.js); status=$$?; kill $$pid; exit $$status

# Not part of `make test`: the suite needs Python 2.7 (tests/autobahn/run.py says how it finds
# one and installs the suite into tests/autobahn/.venv27). ARGS=--write-results updates
# tests/autobahn/RESULTS.md.
autobahn: $(STAMP)
	$(PY) tests/autobahn/run.py $(ARGS)

clean:
	rm -rf $(VENV) tests/js/node_modules $(ASSETS)/node_modules examples/node-*/node_modules \
	  bench/build bench/out .mypy_cache .ruff_cache .pytest_cache tests/autobahn/.venv27 \
	  tests/autobahn/reports
