# GVSL Studio: `make demo` and `make test` set everything up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# Where torch comes from: pip's configured index by default (PyPI's Linux wheel is the CUDA
# build, several GB); https://download.pytorch.org/whl/cpu gives the ~200 MB CPU build.
TORCH_INDEX ?=

.PHONY: demo test check docs venv system-deps app-bundle bundle-check bench clean

$(BIN)/gvsl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned, so that the package's own requirement finds it satisfied and
	# pip never picks another build or version of it.
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[brain,gui,test,dev]"
	touch $(BIN)/gvsl

venv: $(BIN)/gvsl

system-deps:
	PY=$(PY) bash scripts/install_system_deps.sh

# The desktop app with the synthetic cardiac pair, demo weights and the GVSL widgets.
demo: system-deps venv
	bash scripts/demo.sh

# Lint, format, types and the import layers (docs/design/architecture.md); `make test` runs them first.
check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml): guide, design, results and the API reference from the
# docstrings (read statically, nothing imported); any warning fails it. `make test` builds it.
docs: venv
	$(BIN)/mkdocs build --strict -d site

test: system-deps venv check docs
	QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: venv
	$(BIN)/python benchmarks/bench_model.py

# The desktop bundle is built in a virtual environment of its own (.venv-bundle): a plain,
# non-editable install of the package with the GUI, brain and PyInstaller extras, without the
# test and dev tools. Installing ".[app]" into .venv would replace the developer's editable
# install of the package (issue #31).
BUNDLE_VENV := .venv-bundle
BUNDLE_BIN := $(BUNDLE_VENV)/bin

$(BUNDLE_BIN)/pyinstaller: pyproject.toml
	$(PY) -m venv $(BUNDLE_VENV)
	$(BUNDLE_BIN)/pip install -q --upgrade pip
	$(BUNDLE_BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BUNDLE_BIN)/pip install -q ".[brain,gui,app]"
	touch $(BUNDLE_BIN)/pyinstaller

# dist/gvsl-studio/gvsl-studio (see app.spec). The package is reinstalled (without its
# dependencies) each time, so that the bundle's package metadata matches the work tree.
app-bundle: $(BUNDLE_BIN)/pyinstaller
	$(BUNDLE_BIN)/pip install -q --no-deps --force-reinstall .
	$(BUNDLE_BIN)/pyinstaller --noconfirm app.spec

# Builds the bundle, then starts it under Xvfb on the sample pair (a screenshot) and runs a
# frozen `gvsl-studio match` and `evaluate-labels` on sample data (scripts/check_bundle.sh).
# Slow (about 10 min and 1 GB): run it before a release or after changing app.spec, not in CI.
bundle-check: system-deps
	PY=$(PY) bash scripts/check_bundle.sh

clean:
	rm -rf $(VENV) $(BUNDLE_VENV) build dist site *.egg-info
