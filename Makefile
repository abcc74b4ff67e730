# The README's two commands: `make demo` and `make test`. Both set up what they need first.
SHELL := /bin/bash
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
# The venv first on PATH: qgis_process's embedded Python and the worker then see torch.
RUN_ENV := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" QT_QPA_PLATFORM=offscreen PYTHONDONTWRITEBYTECODE=1
PYTEST_ARGS ?=

.PHONY: setup demo test package bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(RUN_ENV) $(PY) scripts/demo.py

test: setup
	@$(RUN_ENV) $(PY) -m pytest $(PYTEST_ARGS)

package:
	@/usr/bin/python3 scripts/package.py

bench: setup
	@$(RUN_ENV) $(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf build dist demo_output .pytest_cache
