"""Workload generator and history checker for block devices (``cargohold verify``).

A workload (``workload.py``) writes self-describing blocks (``payload.py``) to a volume
over NBD (``client.py``, several connections) and logs every invocation, acknowledgement,
failure and flush (``history.py``). The checker (``checker.py``) reads the volume back and
decides for every block whether what it holds is allowed by that history; ``report.py``
prints the result. Used by ``cargohold verify`` (cli/verify_cmd.py) and by tests (fault
scenarios in tests/probe). Documentation: docs/verify.md.

This layer talks to volumes only over NBD: it may import ``cargohold.protocol`` and
``cargohold.errors``, never the engine, replica or store.
"""
