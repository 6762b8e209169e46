# One virtual environment, created and refreshed by `make setup`; every other target uses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser test test-fast lint demo reference serve clean

setup: $(STAMP) browser

# Debian's Chromium, which tests/serve/test_page.py drives through Playwright (never
# `playwright install`: that downloads a browser of its own). Installed only when missing.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's chromium for the page test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "note: /usr/bin/chromium is missing, so tests/serve/test_page.py will fail;" \
				"install Debian's package: apt-get install chromium (as root)"; \
		fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		$(PYTHON) -m pip install --quiet virtualenv && $(PYTHON) -m virtualenv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Everything: unit tests and the slow ones (Ray cluster, Serve, browser, training, XLA compiles).
# Most tests outside a Ray cluster keep one core busy (tracing is single-threaded Python), so
# they run in two processes, a module to each; the `cluster` modules (tests/conftest.py) then
# run alone, as their timings (a replica replaced within 60 s) assume. Both parts always run.
test: setup
	@status=0; \
	$(BIN)/python -m pytest -m "not cluster" -n 2 --dist loadfile || status=$$?; \
	$(BIN)/python -m pytest -m cluster || status=$$?; \
	exit $$status

# Unit tests only, in under two minutes: what to run while editing.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: setup
	$(BIN)/handray demo --out runs/demo

# The demo's recipe for about 90 minutes, measured against training minutes
# (benchmarks/README.md, "The reference run"); run it again to continue an unfinished run.
reference: setup
	$(BIN)/python benchmarks/reference.py --out runs/reference

# The demo's export over HTTP (http://127.0.0.1:8000/), with JSON errors from Ray's proxy too;
# Ctrl-C (or SIGTERM) drains the requests in flight before it stops.
serve: setup
	$(BIN)/handray serve serve_config.yaml

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
