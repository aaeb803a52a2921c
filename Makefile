# The two commands: `make run` and `make test`. Everything else hangs off them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/default.yaml

.PHONY: run test test-fast bench bench-scale bench-long install lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tecosim run $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the edit-test loop, ~45 s of CPU: no OpenDSS study, no federation, nothing slow (README)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not federation and not feeder and not slow and not benchmark"

# both engines on the default study beside their floors, K prosumer federates, market; writes BENCHMARKS.md
# (~2.5 min on 2 cores); BENCH_ARGS e.g. "--repeat 1 --duration 2h --k ''" for a quick look
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# prosumer count / feeder size / split prosumer federates; writes its section of BENCHMARKS.md
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py $(SCALE_ARGS)

# IEEE 8500 (1177 and 3000 prosumers, a day, federation) and the default study over 7 / 30 / 365 days
bench-long: $(STAMP)
	$(BIN)/python benchmarks/long.py $(LONG_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
