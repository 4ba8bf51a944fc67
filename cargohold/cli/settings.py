"""Settings that only the CLI reads, in the one settings style of cargohold
(``cargohold/settings.py``). Typer reads these variables for the flags they stand for
(``envvar=CliSettings.variable(...)``), so a flag still wins over its variable; where the CLI
finds the manager is ``control.settings.ClientSettings`` (``--api``, ``--dir``)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from cargohold.settings import Settings, setting


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class CliSettings(Settings):
    """Flags of ``cargohold`` commands that an environment variable may give."""

    env_prefix: ClassVar[str] = "CARGOHOLD_"
    component: ClassVar[str] = "CLI"

    manager_init: bool = setting(
        False,
        "`cargohold manager --init`: create a new cluster in an empty state store (refused "
        "on one with records)",
    )
    manager_cluster_id: str | None = setting(
        None,
        "`cargohold manager --init --cluster-id`: the id of the cluster to create (a lost "
        "store's, or the one the CA was made for: deploy/ reads it from the bootstrap "
        "ConfigMap)",
    )
    demo_no_mount: str = setting(
        "",
        "any non-empty value: `cargohold demo` does not mount a filesystem (to try the "
        "path it takes on a machine without root)",
    )
