"""The zone of a Kubernetes node, for its agent: ``python -m cargohold.csi.node_zone
--node NAME --out FILE`` writes the node's ``topology.kubernetes.io/zone`` label (the
deprecated ``failure-domain.beta.kubernetes.io/zone`` when only that is set; "" when it
has neither) to FILE.

Run by the init container of the node DaemonSet (deploy/base/node.yaml): the downward API
cannot read node labels, so this asks the API server with the pod's service account
(RBAC: ``get`` on ``nodes``), and the agent starts with ``--zone "$(cat FILE)"``. The
agent registers the zone with the manager, which spreads replicas over zones and hands it
to CSI topology. In-cluster by default (KUBERNETES_SERVICE_HOST/PORT, the service
account's token and CA); ``--api-server``, ``--token-file`` and ``--ca-file`` for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def zone_of(node: dict[str, Any]) -> str:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return next((str(labels[k]) for k in ZONE_LABELS if labels.get(k)), "")


def fetch_node(
    api: str, name: str, token: str, ca_file: str | None, timeout: float
) -> dict[str, Any]:
    url = f"{api.rstrip('/')}/api/v1/nodes/{urllib.parse.quote(name, safe='')}"
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    ctx = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
        node: dict[str, Any] = json.loads(resp.read())
        return node


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cargohold.csi.node_zone", description=__doc__)
    ap.add_argument("--node", required=True, help="the node's name (spec.nodeName)")
    ap.add_argument("--out", required=True, help="file to write the zone to")
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
    )
    default_api = f"https://{host}:{port}" if host else None
    ap.add_argument("--api-server", default=default_api, help="default: in-cluster")
    ap.add_argument("--token-file", default=f"{SA_DIR}/token")
    ap.add_argument("--ca-file", default=f"{SA_DIR}/ca.crt")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    if not args.api_server:
        print("node_zone: not in a cluster (no KUBERNETES_SERVICE_HOST): give --api-server",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        token = open(args.token_file).read().strip() if os.path.exists(args.token_file) else ""
        ca = args.ca_file if os.path.exists(args.ca_file) else None
        node = fetch_node(args.api_server, args.node, token, ca, args.timeout)
    except (OSError, ValueError, urllib.error.URLError) as e:
        print(f"node_zone: cannot read node {args.node} from {args.api_server}: {e} "
              "(the service account needs `get` on nodes)", file=sys.stderr)  # fmt: skip
        return 1
    zone = zone_of(node)
    tmp = args.out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(tmp, "w") as f:
        f.write(zone)
    os.replace(tmp, args.out)
    print(f"node {args.node}: zone {zone!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
