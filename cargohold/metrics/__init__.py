"""Prometheus metrics of every cargohold daemon: the catalogue of names (``catalog``), the
engine's and the node's numbers as metric families (``engine_status``, ``node_stats``), and
one registry per daemon rendered as the text exposition (``exposition``).

Who calls it: the node agent (its ``/metrics`` listener gathers its engines' statuses and
its replica server's per-disk numbers: one scrape target per node) and the manager (the
``/metrics`` route: API latency, reconcilers, volumes, leader, backups). It imports nothing
of cargohold but errors and constants (import-linter: just above settings).
docs/observability.md lists every metric; a test checks that list against ``catalog``.
"""
