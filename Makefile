# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekit-installed
LOCK := constraints.txt
SYSTEM_PACKAGES := adb openssh-server chromium mksh busybox posh
PYTEST_ARGS ?=

.PHONY: demo test setup system-deps clean targets-up targets-down lock

setup: $(STAMP)

# torch first: `torch==2.13.0` resolves to the local CPU wheel here; any other spec pulls GBs of CUDA.
# $(LOCK) pins every package of the working venv: installed as requirements (-r: also what edgekit does
# not require, e.g. setuptools, whose distutils shim changes what the stdlib corpus script reads) and
# as constraints (-c) for edgekit's own dependencies, so a fresh machine gets the same versions.
# The stamp depends on it, so a changed pin reinstalls.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) torch==2.13.0
	$(BIN)/pip install --quiet -c $(LOCK) -r $(LOCK) -e '.[test]'
	touch $@

# Rewrite $(LOCK) from the working venv (after a deliberate version change; re-run the suite).
lock:
	{ sed -n '/^#/p' $(LOCK); $(BIN)/pip freeze --all --exclude-editable | grep -v '^#' \
	  | sed -E 's/^(torch==[^+]*)\+.*/\1/' | sort -f; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

# Debian packages the tests need (real adb server, real sshd, headless chromium;
# mksh, busybox and posh run android_harness/harness.sh under the shells phones and boards have).
system-deps:
	@missing=""; \
	command -v adb >/dev/null || missing="$$missing adb"; \
	test -x /usr/sbin/sshd || missing="$$missing openssh-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v mksh >/dev/null || missing="$$missing mksh"; \
	command -v busybox >/dev/null || missing="$$missing busybox"; \
	command -v posh >/dev/null || missing="$$missing posh"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	$(BIN)/python scripts/demo.py

test: setup system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

targets-up: setup system-deps
	$(BIN)/python scripts/targets up

targets-down:
	$(BIN)/python scripts/targets down

clean:
	rm -rf $(VENV) dist results .cache .pytest_cache
