# Quick start: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create .venv when it is missing and install the project pinned by constraints.txt.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.torchscope-installed

.PHONY: demo test test-cpus lint bench dot chromium clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile --disable-pip-version-check -c constraints.txt -e '.[dev,zoo]'
	touch $(STAMP)

dot:
	@./scripts/ensure-dot

chromium:
	@./scripts/ensure-chromium

demo: $(STAMP) dot
	$(VENV)/bin/torchscope demo

test: $(STAMP) dot chromium
	$(VENV)/bin/ruff check torchscope tests benchmarks examples conftest.py
	$(VENV)/bin/mypy torchscope
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --dist loadfile

# float32 results differ in the last bits between CPUs: the suite must pass whatever kernels run
test-cpus: $(STAMP) dot chromium
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -n 2 --dist loadfile
	ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check torchscope tests benchmarks examples conftest.py
	$(VENV)/bin/mypy torchscope
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check torchscope tests benchmarks examples conftest.py

bench: $(STAMP)
	$(PY) -m pip install --quiet --no-compile --disable-pip-version-check -c constraints.txt -e '.[dev,zoo,bench]'
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info
