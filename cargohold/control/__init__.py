"""The control plane: the manager (REST API, state store, scheduler, reconcilers).

It never imports the data plane (engine, frontend, replica, store, protocol): it decides,
stores and serves; node agents carry its decisions out and report back over its API.
"""
