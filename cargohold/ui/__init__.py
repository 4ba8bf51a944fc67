"""The web console (issue 20, docs/ui.md): server-rendered pages the manager serves at /ui.

Pages are Jinja2 templates over the same ``Service`` calls the REST API makes, with the
caller's identity (so roles and tenants apply exactly as on the API); one vendored script,
htmx (static/README.md), swaps fragments in place and polls the ones that change. Pure
parts: listing.py (filter, sort, paginate), csrf.py (sessions' form tokens), sparkline.py,
conditions.py (what needs attention). session.py authenticates a browser; app.py has the
routes; ``mount`` is what ``cargohold manager`` hands the manager (cli/manager_cmd.py).
"""

from __future__ import annotations
