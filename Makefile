# Two commands do all the setup on a fresh machine:
#   make run    -- install and run the service against the local RabbitMQ
#   make test   -- install, make sure RabbitMQ and PostgreSQL are up, run the whole suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint bench rabbitmq postgres chromium promtool clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

rabbitmq:
	scripts/ensure-rabbitmq.sh

postgres:
	scripts/ensure-postgres.sh

chromium:
	scripts/ensure-chromium.sh

promtool:
	scripts/ensure-promtool.sh

run: $(STAMP) rabbitmq
	$(BIN)/ess serve

test: $(STAMP) rabbitmq postgres chromium promtool
	$(BIN)/pytest $(PYTEST_ARGS)

# Skips the long fault/load tests marked `slow`.
test-fast: $(STAMP) rabbitmq postgres promtool
	$(BIN)/pytest -m 'not slow' $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP) rabbitmq
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
