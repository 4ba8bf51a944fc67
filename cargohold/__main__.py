"""``python -m cargohold`` runs the CLI.

``python -m cargohold engine ...`` (how the node agent starts every volume's engine) runs
the engine without loading the CLI at all: see ``cli/engine_cmd.py``.
"""

import sys

if sys.argv[1:2] == ["engine"]:
    from cargohold.cli import engine_cmd

    sys.exit(engine_cmd.main(sys.argv[2:]))

from cargohold.cli.main import app

app()
