"""``cargohold volume rekey NAME --key NEW`` (or ``--kms-key ID``): rotate the key-encryption
key of an encrypted volume; ``--data-key``: rotate its data key.

    cargohold volume rekey data --key kek-2026
    cargohold volume rekey data --kms-key alias/cargohold-2026
    cargohold volume rekey data --data-key               # a new data key, blocks rewritten
    cargohold volume rekey data --data-key --key kek-2027

With ``--key``/``--kms-key`` the manager unwraps the volume's data keys with the KEK it
names now (which must still be there) and wraps them with the new one; no data is
rewritten. With ``--data-key`` it makes a new data key (the next generation), and the
volume's engine rewrites every block under it in the background, online (a detached
volume's at its next attach); ``volume get`` shows the progress (docs/keys.md).
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
    data_key: bool = typer.Option(
        False, "--data-key", help="rotate the data key: a new one, every block rewritten online"
    ),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Rewrap an encrypted volume's data keys under another key-encryption key, and/or
    rotate its data key (--data-key)."""
    if key is not None and kms_key is not None:
        raise ConfigError("give at most one of --key NAME and --kms-key ID")
    if key is None and kms_key is None and not data_key:
        raise ConfigError("give --key NAME or --kms-key ID (a new KEK), and/or --data-key")
    with ManagerClient.discover(api, dir) as c:
        vol = c.rekey(name, key=key, kms_key=kms_key, data_key=data_key)
    enc = vol.get("encryption") or {}

    def text(v: object) -> None:
        kek = f"{escape(str(enc.get('provider')))}:{escape(str(enc.get('key_ref')))}"
        if key is not None or kms_key is not None:
            say(f"volume [bold]{escape(name)}[/bold]: data keys now wrapped by {kek}")
        if data_key:
            rot = enc.get("rotation") or {}
            when = (
                "at its next attach" if rot.get("state") == "waiting" else "now, in the background"
            )
            say(
                f"volume [bold]{escape(name)}[/bold]: data key generation "
                f"{rot.get('generation')} made; its engine rewrites every block under it "
                f"{when} (volume get {escape(name)} shows the progress)"
            )

    render(vol, output, text)
