# Two commands do everything on a fresh machine:
#   make run    create .venv, install tokenforge, run the default experiment on the embedded default data
#               (config/experiments/default.yaml: no memory, a coreset and core tokensets at the same bytes) and
#               print its comparison
#   make test   the same set-up with test extras, then the test suite
# and the documentation (mkdocs.yml, docs/):
#   make docs        install the docs extra into the venv and build the site strictly into site/
#   make docs-serve  serve it at http://127.0.0.1:8000, rebuilt as docs/ changes
VENV ?= .venv
# CONFIG=config/vqa.yaml, config/experiments/coretokens.yaml, ...: a config laid over config/config.yaml (one run, or an
# experiment's grid); its results folder is named after the file: results/<name>/
CONFIG ?= config/experiments/default.yaml
RUN ?= $(basename $(notdir $(CONFIG)))
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-fast lint dag report clean install device-wheels docs docs-install docs-serve

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m tokenforge.engine.deepspeed  # DeepSpeed's CPU op, compiled once here rather than in the first job
	touch $@

run: install
	snakemake --workflow-profile workflow/profiles/default --configfile $(CONFIG) --config run=$(RUN)
	tokenforge summary results/$(RUN)

test: install
	python -m pytest -q

test-fast: install
	python -m pytest -q -m "not slow"

lint: install
	snakemake --lint

dag: install
	mkdir -p results && snakemake --configfile $(CONFIG) --config run=$(RUN) --dag | tee results/dag.dot

report: install
	snakemake --report results/$(RUN)/snakemake-report.html --configfile $(CONFIG) --config run=$(RUN)

# The docs extra (MkDocs Material, mkdocstrings) on top of install; NO_MKDOCS_2_WARNING: Material's banner about
# its end of life, not a build warning
docs-install: $(VENV)/.docs-installed

$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

docs: docs-install
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict -d site

docs-serve: docs-install
	NO_MKDOCS_2_WARNING=1 mkdocs serve -a 127.0.0.1:8000

# wheels for a lent GPU machine without a package registry (benchmarks/device_throughput.sh runs there)
device-wheels: install
	benchmarks/device_wheels.sh

clean:
	rm -rf results .snakemake
