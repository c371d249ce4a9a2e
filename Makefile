# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned dependencies (requirements.lock) and the
# package (editable) before running.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo_output
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: install demo test test-fast bench lint clean experiment-demo pretrained real-protocol browser

$(STAMP): setup.py pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3"
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[dev,litert]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	WMH=$(BIN)/wmhkeras PY=$(BIN)/python bash scripts/demo.sh $(DEMO)

# Test files are spread over TEST_WORKERS processes (pytest-xdist), each file whole in one process, so its
# module fixtures are built once: 1.65x faster than one process on 2 cores (README, Tests and CI).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST)

# The QC page test (tests/inference/test_qc_browser.py) opens qc.html in headless chromium: Debian's package,
# installed here where it is missing and apt-get may run (root); elsewhere the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium is not installed (needs root and apt-get): the QC browser test will skip"

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# Each benchmark writes its figures as JSON; docs/performance.md records them with their commands.
bench: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python bench/train_step.py --out bench/results/train_step.json
	$(BIN)/python bench/pipeline.py --out bench/results/pipeline.json
	$(BIN)/python bench/segment.py --out bench/results/segment.json
	$(BIN)/python bench/runtimes.py --out bench/results/runtimes.json --doc docs/performance.md

experiment-demo: $(STAMP)
	$(BIN)/wmhkeras synth demo_experiment/cohort --subjects 24 --sites 3 --seed 0
	$(BIN)/wmhkeras experiment configs/experiment_demo.yaml --data demo_experiment/cohort --out demo_experiment/run

# The shipped real-data model (saved_models/open_ms_flair): configs/real_flair.yaml trained on both
# open_ms_data patients (read from ../shared/data or $$WMH_SHARED_DATA), exported, card completed.
pretrained: $(STAMP)
	$(BIN)/python scripts/pretrained.py --out saved_models/open_ms_flair --results docs/real_data_results.json

# The two-patient protocol of docs/real_data.md (train on one patient, test on the other, both ways).
real-protocol: $(STAMP)
	$(BIN)/python scripts/real_data_protocol.py --out runs/real_protocol \
		--arm demo=configs/demo.yaml --arm recipe=configs/real_flair.yaml

lint: $(STAMP)
	$(BIN)/ruff check wmhkeras cli tests bench scripts

clean:
	rm -rf $(DEMO) demo_experiment saved_models/demo build *.egg-info
