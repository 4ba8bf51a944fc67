"""The node agent: one per node, started by ``cargohold agent``.

It registers the node with the manager, runs the node's replica server and the engines
the manager assigns to the node as child processes (it never embeds the data plane), and
converges them to the manager's assignments every heartbeat. Modules:

- ``agent``: the ``Agent`` — ``run_once()`` is one heartbeat (report, assignments,
  converge), ``run()`` repeats it.
- ``processes``: the child processes (replica server, one engine per volume): start,
  watch, restart with backoff, stop.
- ``engine_link``: the client of an engine's control socket (JSON lines).
- ``manager_link``: the client of the manager's REST API, with failover between managers
  (URLs, httpx clients and error mapping: ``cargohold.control.transport``).
"""
