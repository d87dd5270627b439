# Two commands for a fresh machine: `make up` and `make test`. Both install what they need, idempotently.
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CHP     := node_modules/.bin/configurable-http-proxy
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: up test install browser clean

up: install
	$(VENV)/bin/calliope-hub up $(ARGS)

test: install browser
	$(PYTHON) -m pytest $(PYTEST_ARGS)

install: $(STAMP) $(CHP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(CHP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(CHP)

# The browser test drives Debian's Chromium; playwright never downloads a browser of its own here.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

clean:
	rm -rf $(VENV) node_modules
