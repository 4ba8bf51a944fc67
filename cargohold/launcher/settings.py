"""The launcher's settings (``cargohold up``; env ``CARGOHOLD_*``), in the one settings style
of cargohold (``cargohold/settings.py``). ``launcher/cluster.py`` reads them when it starts
a cluster; where the cluster lives is ``control.settings.ClientSettings.dir``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from cargohold.settings import Settings, setting


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class LauncherSettings(Settings):
    """The local cluster launcher (``cargohold up``)."""

    env_prefix: ClassVar[str] = "CARGOHOLD_"
    component: ClassVar[str] = "launcher"

    launcher_command: str = setting(
        "",
        "the command line that runs cargohold for the cluster's processes, split like a "
        "shell does (empty: this Python with -m cargohold)",
    )
    etcd: str = setting("", "the etcd binary for --backend etcd (empty: etcd on PATH)")
