"""The control plane: the manager (REST API, state store, scheduler, reconcilers).

It never imports the data plane (engine, frontend, replica, store, protocol): it decides,
stores and serves; node agents carry its decisions out and report back over its API.

Its clients' side lives here too: ``transport`` (URLs, httpx clients, error answers to
the exception tree: every client of the manager uses it) and ``client`` (``ManagerClient``,
one method per route, and the waits for a volume's states).
"""
