"""Who may talk to whom: the cluster's certificate authority, TLS contexts, peer identities,
bearer tokens and the authorization rules (docs/security.md).

Layering: just above ``settings``; every daemon uses it. ``identity``, ``policy`` and
``tokens`` are pure; ``tls`` uses only the standard library's ``ssl`` (the engine, one
process per attached volume, loads nothing more); ``ca`` issues certificates with the
``cryptography`` package and runs only in the manager, the agent and the CLI.
"""
