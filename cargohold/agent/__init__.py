"""The node agent: one per node, started by ``cargohold agent``.

It registers the node with the manager, runs the node's replica server and the engines
the manager assigns to the node as child processes (it never embeds the data plane), and
converges them to the manager's assignments every heartbeat. Modules:

- ``agent``: the ``Agent`` — ``run_once()`` is one heartbeat (report, assignments,
  converge), ``run()`` repeats it; registration.
- ``replicas``: the node's replica server (one place starts it), LIST and probes, replica
  create and delete, the disks' cluster stamps and trash.
- ``engines``: the engine supervisor (start, restart, replace, retire; replica-set changes).
- ``engine_process``: the engine of one volume and its state machine (the table of states
  and transitions), re-add back-off, status pace.
- ``operations``: operations run on engines for the manager.
- ``node_state``: ``NODEDIR/agent.json``, the node's disks, control socket paths.
- ``processes``: child processes (start, watch, adopt, stop), argv, the replica server's.
- ``identity``, ``disk_stamp``: whether to act for a manager; the disks' cluster stamps.
- ``engine_link``: the client of an engine's control socket (JSON lines).
- ``manager_link``: the client of the manager's REST API, with failover between managers
  (URLs, httpx clients and error mapping: ``cargohold.control.transport``).
"""
