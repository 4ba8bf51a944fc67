"""``cargohold ca``: the cluster's certificate authority (docs/security.md).

    cargohold ca init ./ca --cluster-id c-0123
    cargohold ca issue ./ca --role admin --name alice --out ~/.cargohold/tls
    cargohold ca issue ./ca --role replica --name node-1 --host 10.0.0.1 --out /etc/cargohold/tls
    cargohold ca revoke ./ca --cert /etc/cargohold/tls/tls.crt --reason "node-1 removed"
    cargohold ca rotate ./ca stage|promote|retire
    cargohold ca show ./ca
    cargohold ca kube-secrets --ca ./ca --namespace cargohold-system --tenant k8s-a | kubectl apply -f -
    cargohold ca x509-dir /etc/cargohold/tls ~/.pki/libnbd   # for qemu-img, nbdinfo, nbdcopy

``cargohold up`` makes its cluster's CA itself; these commands are for operators who
bootstrap a Kubernetes installation or rotate and revoke by hand.
"""

from __future__ import annotations

import datetime as dt
import enum
from pathlib import Path

import typer

from cargohold.cli.main import app
from cargohold.cli.output import OUTPUT, Format, handle_errors, render, say
from cargohold.errors import InvalidArgument
from cargohold.security.ca import DEFAULT_LIFETIME, CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.kube_secrets import DEFAULT_LIFETIME as DEFAULT_SECRET_LIFETIME

ca_app = typer.Typer(help="The cluster's certificate authority: make it, issue, revoke, rotate.")
app.add_typer(ca_app, name="ca")

CA_DIR = typer.Argument(..., help="the CA directory (holds ca.key: keep it on the manager only)")


class Step(enum.StrEnum):
    STAGE = "stage"
    PROMOTE = "promote"
    RETIRE = "retire"


@ca_app.command("init")
@handle_errors
def init(
    directory: Path = CA_DIR,
    cluster_id: str = typer.Option(..., "--cluster-id", help="the cluster's id (c-…)"),
) -> None:
    """Make a new CA for a cluster (refuses to replace an existing one)."""
    ca = CertificateAuthority.create(directory, cluster_id)
    say(f"CA for cluster {ca.cluster} made in {directory}")


@ca_app.command("issue")
@handle_errors
def issue(
    directory: Path = CA_DIR,
    role: Role = typer.Option(..., "--role", help="who the certificate speaks for"),
    name: str = typer.Option(..., "--name", help="node, volume or user name"),
    tenant: str | None = typer.Option(None, "--tenant", help="scope it to one tenant"),
    host: list[str] = typer.Option([], "--host", help="DNS name or IP it serves (repeat)"),
    hours: float = typer.Option(
        DEFAULT_LIFETIME.total_seconds() / 3600, "--hours", help="lifetime", min=0.01
    ),
    out: Path = typer.Option(..., "--out", help="credentials directory to write"),
) -> None:
    """Issue a key and certificate into a credentials directory (ca.crt, tls.crt, tls.key,
    ca.crl: the keys of a Kubernetes TLS Secret)."""
    ca = CertificateAuthority.load(directory)
    issued = ca.issue(Identity(ca.cluster, role, name, tenant), host, dt.timedelta(hours=hours))
    issued.write(out)
    say(
        f"{role}/{name}: serial {issued.serial:x}, valid until {issued.not_after:%Y-%m-%d %H:%M} UTC, in {out}"
    )


@ca_app.command("x509-dir")
@handle_errors
def x509_dir(
    credentials: Path = typer.Argument(
        ..., help="credentials directory (tls.crt, tls.key, ca.crt)"
    ),
    out: Path = typer.Argument(..., help="directory to make, for qemu and libnbd"),
    side: str = typer.Option("client", "--side", help="client or server"),
) -> None:
    """Link a credentials directory's files under the names qemu's tls-creds-x509 and
    libnbd (nbdinfo, nbdcopy: ?tls-certificates=DIR) read: ca-cert.pem, ca-crl.pem,
    client-cert.pem, client-key.pem (docs/engine.md, "Where the NBD endpoint listens")."""
    from cargohold.security.x509_dir import lay_out

    say(f"{lay_out(credentials, out, side)}: {side} credentials for qemu and libnbd")


@ca_app.command("revoke")
@handle_errors
def revoke(
    directory: Path = CA_DIR,
    cert: Path | None = typer.Option(None, "--cert", help="the certificate to revoke"),
    serial: str | None = typer.Option(None, "--serial", help="or its serial number (hex)"),
    reason: str = typer.Option(..., "--reason", help="recorded with it"),
) -> None:
    """Revoke a certificate: it is refused wherever the new ca.crl has reached (and
    everywhere once it expires)."""
    from cryptography import x509

    if (cert is None) == (serial is None):
        raise InvalidArgument("give exactly one of --cert and --serial")
    number = (
        x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        if cert is not None
        else int(serial or "", 16)
    )
    CertificateAuthority.load(directory).revoke(number, reason)
    say(f"revoked {number:x}; distribute {directory}/ca.crl")


@ca_app.command("rotate")
@handle_errors
def rotate(
    directory: Path = CA_DIR,
    step: Step = typer.Argument(..., help="stage, then promote, then retire"),
) -> None:
    """Rotate the CA in three steps, each after the previous one reached every component
    (docs/security.md, "Rotating the CA")."""
    ca = CertificateAuthority.load(directory)
    if step is Step.STAGE:
        ca.stage()
    elif step is Step.PROMOTE:
        ca.promote()
    else:
        ca.retire()
    say(f"CA rotation: {step} done")


@ca_app.command("show")
@handle_errors
def show(directory: Path = CA_DIR, output: Format = OUTPUT) -> None:
    """The CA's cluster, the CAs trusted now and what was revoked."""
    from cryptography import x509

    ca = CertificateAuthority.load(directory)
    trusted = x509.load_pem_x509_certificates(ca.trust_pem())
    data = {
        "cluster": ca.cluster,
        "signer": ca.cert.subject.rfc4514_string(),
        "trusted": [
            {
                "subject": c.subject.rfc4514_string(),
                "not_after": c.not_valid_after_utc.isoformat(),
            }
            for c in trusted
        ],
        "revoked": ca.revoked(),
    }

    def people(d: dict[str, object]) -> None:
        say(f"cluster {d['cluster']}; signs with {d['signer']}")
        for c in trusted:
            say(f"  trusts {c.subject.rfc4514_string()} until {c.not_valid_after_utc:%Y-%m-%d}")
        for r in ca.revoked():
            say(f"  revoked {int(str(r['serial'])):x} at {r['at']}: {r['reason']}")

    render(data, output, people)


@ca_app.command("kube-secrets")
@handle_errors
def kube_secrets(
    ca_dir: Path = typer.Option(..., "--ca", help="the CA directory (made with `ca init`)"),
    namespace: str = typer.Option("cargohold-system", "--namespace", help="where cargohold runs"),
    tenant: str | None = typer.Option(
        None, "--tenant", help="the tenant this Kubernetes cluster's CSI driver acts for"
    ),
    csi_name: str = typer.Option("kubernetes", "--csi-name", help="the CSI driver's name"),
    manager_host: list[str] = typer.Option(
        [], "--manager-host", help="another name or address the manager's API is reached by"
    ),
    etcd_members: int = typer.Option(
        3, "--etcd-members", min=0, help="etcd members of deploy/ha (0: no etcd Secrets)"
    ),
    etcd_host: list[str] = typer.Option(
        [], "--etcd-hosts", help="another name or address of etcd's members (repeat)"
    ),
    days: float = typer.Option(
        DEFAULT_SECRET_LIFETIME.days, "--days", min=0.01, help="lifetime of the certificates"
    ),
) -> None:
    """Print the Secrets of a Kubernetes installation as YAML, for `kubectl apply -f -`
    (docs/kubernetes.md, "Bootstrap"): the CA (the manager's only), the trust bundle,
    the manager's, the CSI driver's and etcd's certificates, freshly issued. Re-run it
    and apply before the certificates expire: components pick up the new files."""
    import yaml

    from cargohold.security.kube_secrets import kube_secrets as build

    docs = build(
        CertificateAuthority.load(ca_dir),
        namespace,
        tenant=tenant,
        csi_name=csi_name,
        manager_hosts=manager_host,
        etcd_members=etcd_members,
        etcd_hosts=etcd_host,
        lifetime=dt.timedelta(days=days),
    )
    typer.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)
