# The README's two commands are `make demo` and `make test`; everything bootstraps itself.
VENV := .venv/bin
.PHONY: venv venv-test demo test test-fast lint typecheck bench fuzz lock clean

venv:
	@bash scripts/bootstrap.sh

# The tests also need Chromium (the web dashboard's browser test) and tmux (watch captures).
venv-test:
	@bash scripts/bootstrap.sh --test

demo: venv
	$(VENV)/infusiond demo $(ARGS)

lint: venv
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

typecheck: venv
	$(VENV)/mypy

# Full suite: lint, types, every test including the slow fault/outage ones.
test: venv-test
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/pytest $(PYTEST_ARGS)

# Everyday loop: skips tests marked slow.
test-fast: venv-test
	$(VENV)/pytest -m "not slow" $(PYTEST_ARGS)

# Fault-simulation campaign against the real gateway in virtual time (tests/sim):
# `make fuzz` runs COUNT seeded schedules from a random first seed (or from SEED);
# `make fuzz SEED=n` alone replays seed n and prints its verdict and minimal schedule.
COUNT ?=
SEED ?=
LENGTH ?= 10
WORKERS ?= 2
fuzz: venv-test
	$(VENV)/python -m tests.sim.fuzz $(if $(SEED),--seed $(SEED)) $(if $(COUNT),--count $(COUNT)) --length $(LENGTH) --workers $(WORKERS)

bench: venv
	@$(VENV)/python -m bench $(ARGS)

# Regenerate requirements.lock after changing dependencies in pyproject.toml.
lock:
	uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes --universal -o requirements.lock

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis
