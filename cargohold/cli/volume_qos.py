"""The QoS options of ``cargohold volume create`` and ``volume update`` (docs/qos.md): one
typer option per limit, defined once here and added to both commands by ``qos_options``,
read with ``qos_limits.parse_text`` (``10k``, ``100Mi``, ``2s``), so the CLI's errors are
the manager's and the CSI driver's. No typer app here.

Units (one rule, the same as the CSI parameters'): IOPS take ``k`` (10^3) or a plain
number; bandwidths are Kubernetes quantities — ``M``, ``G`` are powers of ten (``200M`` =
200 MB/s), ``Mi``, ``Gi`` powers of two (``100Mi`` = 100 MiB/s), because that is what a
StorageClass or VolumeAttributesClass author writes. Sizes (``--size``) are different on
purpose: they refuse ``M``/``G`` as ambiguous and want ``Mi``/``Gi`` (settings.parse_size):
a size off by 5% is a wrong disk, a limit off by 5% is not."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from cargohold.errors import ConfigError, InvalidArgument
from cargohold.qos_limits import BY_NAME, LIMITS, bandwidth_text, parse_text

_HELP = {
    "max_iops": "IOPS, reads and writes together (one op per 256 KiB), e.g. 5000 or 10k",
    "max_read_iops": "read IOPS",
    "max_write_iops": "write IOPS",
    "max_bandwidth": "bytes/s, reads and writes together, a Kubernetes quantity: "
    "100Mi = 100 MiB/s (2^20), 200M = 200 MB/s (10^6)",
    "max_read_bandwidth": "read bytes/s (100Mi = MiB/s, 200M = MB/s)",
    "max_write_bandwidth": "write bytes/s (100Mi = MiB/s, 200M = MB/s)",
    "burst_seconds": "seconds an idle volume may run ahead of its limits (default 0)",
    "weight": "share of a busy node's IOPS, relative to other volumes (1-1000; default 100)",
    "min_iops": "IOPS guaranteed on a busy node, whatever the weights",
}
QOS_OPTIONS: dict[str, Any] = {
    lim.name: typer.Option(None, lim.flag, help=_HELP[lim.name], rich_help_panel="QoS")
    for lim in LIMITS
}


def qos_from_options(*values: str | None) -> dict[str, Any]:
    """The options given, in ``LIMITS`` order (trailing ones may be omitted), as a merge patch: a limit given as 0 or
    ``none`` is None (remove it), one not given is left out. ConfigError names a bad one."""
    out: dict[str, Any] = {}
    if len(values) > len(LIMITS):
        raise ValueError("more QoS options than limits")
    for lim, text in zip(LIMITS, values, strict=False):  # the last ones may be left out
        if text is None:
            continue
        try:
            out[lim.name] = parse_text(lim.name, text)
        except InvalidArgument as e:
            raise ConfigError(f"{lim.flag}: {e}") from None
    return out


F = TypeVar("F", bound=Callable[..., Any])


def qos_options(func: F) -> F:
    """Give a command the QoS options, one per limit (``QOS_OPTIONS``), in place of its
    parameter ``qos``: the command is called with ``qos`` = the merge patch
    ``qos_from_options`` makes of what was given (``{}``: none). Used by ``volume create``
    and ``volume update``, so both take the same options with the same help and errors."""
    sig = inspect.signature(func)
    names = list(sig.parameters)
    at = names.index("qos")
    added = [
        inspect.Parameter(
            lim.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=QOS_OPTIONS[lim.name],
            annotation=str | None,
        )
        for lim in LIMITS
    ]
    params = list(sig.parameters.values())
    kinds = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if i > at else p
        for i, p in enumerate(params)
    ]
    new = sig.replace(parameters=[*kinds[:at], *added, *kinds[at + 1 :]])

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = [kwargs.pop(lim.name, None) for lim in LIMITS]
        return func(*args, qos=qos_from_options(*given), **kwargs)

    wrapper.__signature__ = new  # type: ignore[attr-defined]
    annotations = {k: v for k, v in func.__annotations__.items() if k != "qos"}
    wrapper.__annotations__ = {**annotations, **{lim.name: str | None for lim in LIMITS}}
    return wrapper  # type: ignore[return-value]


def qos_text(q: dict[str, Any] | None) -> str:
    """``volume get``'s qos line: 'max_iops=1000 burst_seconds=1; throttled 12 requests
    (0.4 s)'; with 'applying' while the engine has not taken a change yet."""
    if not q:
        return ""
    from cargohold.qos_limits import describe

    limits = {k: v for k, v in (q.get("limits") or {}).items() if k in BY_NAME and v is not None}
    text = describe(limits)
    applied = q.get("applied")
    fair = q.get("fair_iops")
    shared = dict(limits)
    if isinstance(fair, int):  # the node is busy: its agent holds the volume to a share
        shared["max_iops"] = min(int(limits.get("max_iops") or fair), fair)
        text += f" (node busy: its fair share is {fair} IOPS)"
    fair_bw = q.get("fair_bandwidth")
    if isinstance(fair_bw, int):  # the same for the node's bandwidth
        shared["max_bandwidth"] = min(int(limits.get("max_bandwidth") or fair_bw), fair_bw)
        text += f" (node bandwidth busy: its fair share is {bandwidth_text(fair_bw)})"
    nice = q.get("nice")
    if isinstance(nice, int) and nice > 0:  # its weight lowers its engine's CPU priority
        text += f" (engine CPU priority: nice {nice})"
    if applied is not None and applied != shared:
        text += f" (engine applies {describe(applied)}: changing)"
    if applied is not None:
        text += (
            f"; throttled {q.get('throttled_requests_total', 0)} requests "
            f"({q.get('throttled_seconds_total', 0.0):g} s waited)"
        )
    return text
