"""``cargohold volume update NAME --max-iops ...``: change a volume's QoS limits online.

    cargohold volume update data --max-iops 2000 --max-bandwidth 200Mi
    cargohold volume update data --max-iops none        # remove that limit

A limit not given stays as it is; ``0`` or ``none`` removes it. The manager stores the
limits and the volume's engine, if it runs, applies them within a second, without a
detach (docs/qos.md). ``volume get`` shows the limits and how often the volume waited.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from cargohold.cli.output import API, DIR, OUTPUT, Format, handle_errors, render, say
from cargohold.cli.volume_cmd import volume_app
from cargohold.cli.volume_qos import qos_options, qos_text
from cargohold.control.client import ManagerClient
from cargohold.errors import ConfigError

__all__ = ["update"]


@volume_app.command("update")
@handle_errors
@qos_options  # --max-iops ... --min-iops (cli/volume_qos.py), as ``qos``
def update(
    name: str,
    qos: dict[str, Any] | None = None,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Change a volume's QoS limits, attached or not (a running engine applies them
    within a second). A limit not given stays; 0 or none removes it. Bandwidths are
    Kubernetes quantities: 100Mi = 100 MiB/s, 200M = 200 MB/s."""
    change = qos or {}
    if not change:
        raise ConfigError("nothing to change: give at least one of the QoS options (--help)")
    with ManagerClient.discover(api, dir) as c:
        vol = c.update_volume(name, change)

    def human(v: dict[str, Any]) -> None:
        say(f"volume [bold]{escape(name)}[/bold]: QoS {escape(qos_text(v.get('qos')))}")

    render(vol, output, human)
