"""The faults a local cluster injects on purpose: ``cargohold node kill|start``, the
probe and e2e tests' node and manager crashes, partitions in a ``--netns`` lab.

``Faults`` is a part of ``LocalCluster`` (``cluster.py``). A kill is SIGKILL of the
recorded process group (a node dies as one: its agent, replica server and engines); a
start reuses the same flags, directory, address and namespace. A node's agent started
again adopts what its predecessor left running. Partitions take the node's bridge port
down (``netns.partition``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from cargohold.launcher import netns
from cargohold.launcher.netns import LabLayout
from cargohold.launcher.processes import (
    LauncherError,
    ManagerProc,
    NodeProc,
    group_members,
    kill_group,
    wait_gone,
)
from cargohold.launcher.startup import Startup


class Faults(Startup):
    """Kill and start nodes and managers, partition and heal nodes."""

    if TYPE_CHECKING:  # the fields and records of LocalCluster this part uses
        nodes: dict[str, NodeProc]
        lab: LabLayout | None

        def _locked(self) -> contextlib.AbstractContextManager[None]: ...
        def reload(self) -> None: ...
        def save(self) -> None: ...

    def kill_node(self, name: str) -> bool:
        """SIGKILL all of a node's processes (its agent's process group): a crash.
        False if nothing of it was running."""
        with self._locked():
            self.reload()
            node = self._node(name)
            killed = False
            for g in node.groups():
                killed = kill_group(g, signal.SIGKILL) or killed
            if node.running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGKILL)  # type: ignore[arg-type]
                killed = True
            if wait_gone([node], time.monotonic() + 10):
                raise LauncherError(f"{name} (pgid {node.pgid}) survived SIGKILL")
            node.pid = node.pgid = node.start_time = None
            node.earlier_pgids = []
            self.save()
        return killed

    def start_node(self, name: str, timeout: float = 30.0) -> bool:
        """Start a node's agent again (same flags, dir, address, namespace) and wait until
        the manager sees it up (``timeout=0``: do not wait). False if it was running."""
        with self._locked():
            self.reload()
            node = self._node(name)
            if node.running():
                return False
            # the agent died alone: what it left running (replica server, engines) is
            # adopted by the new agent, not killed; the data path does not stop
            node.earlier_pgids = [
                g for g in node.groups() if g != os.getpgrp() and group_members(g)
            ]
            self._spawn(node, self._agent_argv(node))
            self.save()
        if timeout > 0:
            self._wait([node], time.monotonic() + timeout, lambda: self._nodes_health([node]))
        return True

    def kill_manager(self, id: str) -> bool:
        """SIGKILL a manager (failover tests). False if it was not running."""
        with self._locked():
            self.reload()
            m = self._manager(id)
            killed = kill_group(m.pgid, signal.SIGKILL)
            if wait_gone([m], time.monotonic() + 10):
                raise LauncherError(f"{id} (pid {m.pid}) survived SIGKILL")
            m.pid = m.pgid = m.start_time = None
            self.save()
        return killed

    def start_manager(
        self, id: str, timeout: float = 30.0, init: bool = False, cluster_id: str | None = None
    ) -> bool:
        """Start a manager again and wait for its /healthz. False if it was running.
        ``init``: with ``--init`` (a new cluster in an empty store; rehearsals of the
        wrong-state-store mistake); ``cluster_id``: with ``--init --cluster-id`` (a lost
        store recreated under the cluster's id, before adopting its volumes)."""
        with self._locked():
            self.reload()
            m = self._manager(id)
            if m.running():
                return False
            self._spawn(m, self._manager_argv(m, init=init, cluster_id=cluster_id))
            self.save()
        if timeout > 0:
            self._wait([m], time.monotonic() + timeout, lambda: self._managers_health([m]))
        return True

    def partition_node(self, name: str) -> None:
        """Cut a node off the lab network (its bridge port goes down); needs ``netns``."""
        netns.partition(self._need_lab(), self._node(name).index)

    def heal_node(self, name: str) -> None:
        netns.heal(self._need_lab(), self._node(name).index)

    # -- internals --

    def _node(self, name: str) -> NodeProc:
        try:
            return self.nodes[name]
        except KeyError:
            raise LauncherError(
                f"no node {name!r} in the cluster in {self.dir} (nodes: {', '.join(self.nodes)})"
            ) from None

    def _manager(self, id: str) -> ManagerProc:
        for m in self.managers:
            if m.id == id:
                return m
        ids = ", ".join(m.id for m in self.managers)
        raise LauncherError(f"no manager {id!r} in the cluster in {self.dir} (managers: {ids})")

    def _need_lab(self) -> LabLayout:
        if self.lab is None:
            raise LauncherError("partitions need a cluster started with --netns")
        return self.lab
