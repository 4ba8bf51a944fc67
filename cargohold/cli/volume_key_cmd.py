"""``cargohold volume rekey NAME --key NEW`` (or ``--kms-key ID``): rotate the key-encryption
key of an encrypted volume.

    cargohold volume rekey data --key kek-2026
    cargohold volume rekey data --kms-key alias/cargohold-2026

The manager unwraps the volume's data key with the KEK it names now (which must still be
there) and wraps it with the new one; no data is rewritten, the volume may stay attached.
Rotating the data key itself (rewriting every block) is not built yet (docs/keys.md).
"""

from __future__ import annotations

import typer
from rich.markup import escape

from cargohold.cli.output import API, DIR, OUTPUT, Format, handle_errors, render, say
from cargohold.cli.volume_cmd import volume_app
from cargohold.control.client import ManagerClient
from cargohold.errors import ConfigError

__all__ = ["rekey"]


@volume_app.command("rekey")
@handle_errors
def rekey(
    name: str,
    key: str | None = typer.Option(None, "--key", help="the new key-encryption key's name"),
    kms_key: str | None = typer.Option(None, "--kms-key", help="the new KMS key id"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Rewrap an encrypted volume's data key under another key-encryption key."""
    if (key is None) == (kms_key is None):
        raise ConfigError("give exactly one of --key NAME and --kms-key ID")
    with ManagerClient.discover(api, dir) as c:
        vol = c.rekey(name, key=key, kms_key=kms_key)
    enc = vol.get("encryption") or {}
    render(
        vol,
        output,
        lambda v: say(
            f"volume [bold]{escape(name)}[/bold]: data key now wrapped by "
            f"{escape(str(enc.get('provider')))}:{escape(str(enc.get('key_ref')))}"
        ),
    )
