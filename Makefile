# The README's two commands: `make demo` and `make test`. Both set everything up first.

.PHONY: test-long upgrade-test k8s-e2e install uninstall
.PHONY: setup demo test lint unit integration probe soak bench bench-engine bench-all bench-control \
	bench-rebuild clean soak-faults bench-backup bench-ui

VENV := .venv/bin

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/cargohold demo

# `cargohold` on PATH: a symlink to the venv's script, so the clone stays its one home and
# `git pull && make setup` updates it (Debian 12's pip refuses `pip install --user`: PEP 668).
# Into $(PREFIX)/bin: /usr/local/bin as root, else ~/.local/bin.
PREFIX ?= $(shell [ "$$(id -u)" -eq 0 ] && echo /usr/local || echo $$HOME/.local)
install: setup
	@mkdir -p "$(PREFIX)/bin"
	@ln -sfn "$(CURDIR)/$(VENV)/cargohold" "$(PREFIX)/bin/cargohold"
	@echo "installed $(PREFIX)/bin/cargohold -> $(CURDIR)/$(VENV)/cargohold"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; \
		*) echo "note: $(PREFIX)/bin is not on your PATH: export PATH=\"$(PREFIX)/bin:\$$PATH\"";; esac

uninstall:
	@if [ -L "$(PREFIX)/bin/cargohold" ]; then rm "$(PREFIX)/bin/cargohold" && \
		echo "removed $(PREFIX)/bin/cargohold"; else echo "no $(PREFIX)/bin/cargohold symlink"; fi

lint: setup
	$(VENV)/ruff check cargohold tests benchmarks
	$(VENV)/ruff format --check cargohold tests benchmarks
	$(VENV)/lint-imports
	$(VENV)/mypy

# The default run: everything but soaks. pytest exits 5 when it collected nothing; that
# is not a pass, so it stays an error here.
# two workers (pytest-xdist): most of a test's time is waiting on real processes, so two
# run side by side on 2 cores in about half the time; each test keeps its own cluster,
# ports, directories and namespaces. --dist worksteal: a worker that runs out of tests
# takes half of the other's queue, instead of idling while the other works through a
# batch of long cluster tests handed out in advance
test: lint
	$(VENV)/pytest -q -n 2 --dist worksteal

unit: setup
	$(VENV)/pytest -q tests/unit

integration: setup
	$(VENV)/pytest -q tests/integration

probe: setup
	$(VENV)/pytest -q -m 'not soak' tests/probe

# what `make test` leaves out for its time budget (pyproject's `long` marker): ~6 minutes
test-long: setup
	$(VENV)/pytest -q -m long

# a rolling upgrade of a local cluster under a verify workload, and a kill -9 of the CSI
# node plugin under I/O (docs/upgrades.md); both are in test-long too (~4 minutes)
upgrade-test: setup
	$(VENV)/pytest -q -s -m long tests/integration/test_upgrade.py tests/e2e/test_csi_restart.py
# the real-cluster suite against the cluster KUBECONFIG names, with the driver
# running there (docs/kubernetes.md, "Testing in a real cluster"); never part of `make test`.
# Without a cluster it says so and exits non-zero (3).
k8s-e2e: setup
	CARGOHOLD_K8S_E2E=1 $(VENV)/pytest -p no:cacheprovider -o addopts="" --timeout=900 -ra -v \
		tests/k8s_e2e

soak: setup
	$(VENV)/pytest -q -m soak

bench: setup
	$(VENV)/python benchmarks/replica_server.py --json benchmarks/results/replica_server.json

# fio's nbd engine against the local file, nbdkit, qemu-nbd, nbd-serve, engine x1 and x3
bench-engine: setup
	$(VENV)/python benchmarks/engine.py --json benchmarks/results/engine.json

# issue 6: everything on this machine (engine.py's systems + a volume of a 3-node local
# cluster, control plane, rebuilds); JSON, benchmarks/results/engine.png, docs/benchmarks.md
bench-all: setup
	$(VENV)/python benchmarks/suite.py

# provisioning latencies of 100 volumes and the idle cost of 100 attached volumes
bench-control: setup
	$(VENV)/python benchmarks/control_plane.py --json benchmarks/results/control_plane.json

# full rebuild of a 4 GiB volume with 3 GiB written; delta rebuild after 1% changed
bench-rebuild: setup
	$(VENV)/python benchmarks/rebuild.py --json benchmarks/results/rebuild.json

# issue 17: raw S3 PUT/GET vs full backup and restore through the repository, an incremental
# after 1% changed, objects per GiB, dedup of 10 clones (its own SeaweedFS on loopback)
bench-backup: setup
	$(VENV)/python benchmarks/backup.py --json benchmarks/results/backup.json

# issue 20: the web console's pages with 2,000 volumes in the state store (docs/benchmarks.md)
bench-ui: setup
	$(VENV)/python benchmarks/ui.py --json benchmarks/results/ui.json

# issue 7: the fault matrix on a randomized schedule (SOAK_SECONDS, default 600; SOAK_BACKEND
# sqlite or etcd); prints the SoakSummary table. docs/reliability.md
soak-faults: setup
	CARGOHOLD_SOAK_SECONDS=$${SOAK_SECONDS:-600} CARGOHOLD_SOAK_BACKEND=$${SOAK_BACKEND:-sqlite} \
		$(VENV)/pytest -q -s -m soak \
		tests/e2e/test_fault_matrix.py::test_fault_soak

clean:
	rm -rf .venv .pytest_cache .hypothesis .ruff_cache .mypy_cache build *.egg-info
