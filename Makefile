# The README's two commands: `make demo` and `make test`. Both set everything up first.
.PHONY: setup demo test lint unit integration probe soak bench bench-engine clean

VENV := .venv/bin

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/cargohold demo

lint: setup
	$(VENV)/ruff check cargohold tests benchmarks
	$(VENV)/ruff format --check cargohold tests benchmarks
	$(VENV)/lint-imports

# The default run: everything but soaks. pytest exits 5 when it collected nothing; that
# is not a pass, so it stays an error here.
test: lint
	$(VENV)/pytest -q

unit: setup
	$(VENV)/pytest -q tests/unit

integration: setup
	$(VENV)/pytest -q tests/integration

probe: setup
	$(VENV)/pytest -q tests/probe

soak: setup
	$(VENV)/pytest -q -m soak

bench: setup
	$(VENV)/python benchmarks/replica_server.py --json benchmarks/results/replica_server.json

# fio's nbd engine against the local file, nbdkit, qemu-nbd, nbd-serve, engine x1 and x3
bench-engine: setup
	$(VENV)/python benchmarks/engine.py --json benchmarks/results/engine.json

clean:
	rm -rf .venv .pytest_cache .hypothesis .ruff_cache build *.egg-info
