# Two commands for a fresh machine: `make up` and `make test`. Both install what they need, idempotently,
# into the project only (.venv and node_modules). `make up` installs what running the product needs;
# `make test` and `make lint` add the test extra on top.
VENV        := .venv
PYTHON      := $(VENV)/bin/python
PIP         := $(PYTHON) -m pip install
UP_STAMP    := $(VENV)/.installed-up
TEST_STAMP  := $(VENV)/.installed-test
CHP         := node_modules/.bin/configurable-http-proxy
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: up test lint install install-test browser haproxy promtool clean

up: install
	$(VENV)/bin/calliope-hub up $(ARGS)

# Every test, then lint and type checks: CI runs exactly this.
test: install-test browser haproxy promtool
	$(PYTHON) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory lint

# Configured in pyproject.toml. All three run, so one report shows everything; the target fails if any of them did.
lint: install-test
	@status=0; \
	$(VENV)/bin/ruff check || status=1; \
	$(VENV)/bin/ruff format --check || status=1; \
	$(VENV)/bin/mypy calliope_hub || status=1; \
	exit $$status

install: $(UP_STAMP) $(CHP)

install-test: $(TEST_STAMP) $(CHP)

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

# The product: the base dependencies and JupyterLab (the `local` extra), nothing for tests.
$(UP_STAMP): pyproject.toml | $(PYTHON)
	@echo "Installing Calliope Hub, JupyterHub and JupyterLab into $(VENV) (one to two minutes the first time)"
	$(PIP) -e '.[local]'
	touch $@

$(TEST_STAMP): $(UP_STAMP)
	@echo "Installing the test extra (pytest, moto, playwright, hypothesis, ruff, mypy) into $(VENV)"
	$(PIP) -e '.[test]'
	touch $@

$(CHP): package.json
	@echo "Installing configurable-http-proxy into node_modules"
	npm install --no-audit --no-fund --loglevel=error
	touch $(CHP)

# The browser test drives Debian's Chromium; playwright never downloads a browser of its own here.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The HA stack's load balancer (`up --ha`, tests/ha): Debian's HAProxy, never a hand-written balancer.
haproxy:
	@command -v haproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; }

# docs/alerts' own checker (`promtool check rules` and its rule unit tests): Debian's prometheus
# package, for promtool alone; no Prometheus server is started.
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

clean:
	rm -rf $(VENV) node_modules
