"""Test support, one definition of each helper, for tests/ and benchmarks/ alike.

Modules by role:

- ``processes``: start and stop real cargohold daemons (replica server) by PID, output in a
  log file, the port parsed from it; a replica server inside the test's own event loop; bit rot.
- ``engine``: ``cargohold engine`` as a real process, and ``engine_control`` its control client.
- ``nbd_server``: ``cargohold nbd-serve`` as a real process.
- ``nbd_clients``: the qemu-io / NBD client helpers, and ``need`` to skip when a tool is missing.
- ``polling``: ``wait_until(predicate, timeout, what)``: poll with a deadline, fail clearly.
- ``replica_cluster``: ``Cluster``, n real replica servers with one replica of one volume each.
- ``power_loss``: a machine crash simulated on replica directories (durable image, pages drawn
  per seed, a new boot id in a mount namespace).
- ``floods``: the connection floods (NBD and replica wire) tests and benchmarks/floods.py share.

Benchmarks import from here too (never from test files): ``from tests.support.processes import
ServerProc`` with the repository root on ``sys.path``.
"""
