"""``cargohold key``: the key-encryption keys (KEKs) encrypted volumes are wrapped with.

    cargohold key list                                   # each KEK and the volumes it wraps
    cargohold key rotate --from default --to kek-2027    # rewrap every volume of a KEK
    cargohold key rotate --from default --to-kms alias/cargohold

``key rotate`` is ``volume rekey`` over every volume whose data key a KEK wraps, one after
another: the data keys stay, no data is rewritten; the old KEK must still be there until it
ends. A volume that fails (its record changed meanwhile, a KEK missing) is named and the
others go on; run it again to finish. docs/keys.md.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.main import app
from cargohold.cli.output import API, DIR, OUTPUT, Format, handle_errors, render, say
from cargohold.control.client import ManagerClient
from cargohold.errors import CargoholdError, ConfigError

key_app = typer.Typer(help="Key-encryption keys of encrypted volumes (docs/keys.md).")
app.add_typer(key_app, name="key", no_args_is_help=True)


def _ref(v: dict[str, Any]) -> str:
    enc = v.get("encryption") or {}
    return f"{enc.get('provider')}:{enc.get('key_ref')}"


@key_app.command("list")
@handle_errors
def list_keys(output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """Each KEK in use (provider:name) and the encrypted volumes whose data key it wraps."""
    with ManagerClient.discover(api, dir) as c:
        vols = [v for v in c.volumes() if v.get("encryption")]
    out: dict[str, list[str]] = {}
    for v in vols:
        out.setdefault(_ref(v), []).append(str(v["name"]))
    rows = [{"key": k, "volumes": sorted(n)} for k, n in sorted(out.items())]

    def show(rs: list[dict[str, Any]]) -> None:
        for r in rs:
            say(f"{escape(r['key'])}: {escape(', '.join(r['volumes']))}")
        if not rs:
            say("no encrypted volumes")

    render(rows, output, show)


@key_app.command("rotate")
@handle_errors
def rotate(
    from_key: str = typer.Option(..., "--from", help="the KEK's name now (or a KMS key id)"),
    to: str | None = typer.Option(None, "--to", help="the new KEK's name (provider file)"),
    to_kms: str | None = typer.Option(None, "--to-kms", help="the new KMS key id"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Rewrap the data key of every volume wrapped by KEK --from under --to (or --to-kms)."""
    if (to is None) == (to_kms is None):
        raise ConfigError("give exactly one of --to NAME and --to-kms ID")
    done, failed = [], []
    with ManagerClient.discover(api, dir) as c:
        for v in c.volumes():
            enc = v.get("encryption") or {}
            if enc.get("key_ref") != from_key or enc.get("shredded"):
                continue
            try:
                c.rekey(str(v["name"]), key=to, kms_key=to_kms)
                done.append(str(v["name"]))
            except CargoholdError as e:
                failed.append({"volume": v["name"], "error": str(e)})
    result = {"rekeyed": done, "failed": failed}
    render(
        result,
        output,
        lambda r: say(
            f"{len(done)} volume(s) rewrapped under {escape(to or to_kms or '')}"
            + "".join(
                f"\n[red]{escape(str(f['volume']))}: {escape(f['error'])}[/red]" for f in failed
            )
        ),
    )
    if failed:
        raise typer.Exit(1)
