"""Numbers and tables the docs state and the code owns: a doc that drifts fails here.

Each test names the doc and the code it compares; fix whichever is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path

from cargohold.control.settings import ManagerSettings
from cargohold.errors import STATUS_TO_ERROR

ROOT = Path(__file__).resolve().parents[2]


def _read(rel: str) -> str:
    return (ROOT / rel).read_text()


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading``."""
    after = text[text.index(heading) :]
    rows = []
    started = False
    for line in after.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header row


def test_replica_wire_status_table_matches_the_error_classes():
    """docs/formats/replica-wire.md "Status codes" against errors.STATUS_TO_ERROR."""
    rows = _table_rows(_read("docs/formats/replica-wire.md"), "## Status codes")
    doc = {int(code): cls.strip("`") for code, cls, *_ in rows if code != "0"}
    code = {status: cls.__name__ for status, cls in STATUS_TO_ERROR.items()}
    assert doc == code


def test_every_status_maps_back_to_the_class_that_sent_it():
    for status, cls in STATUS_TO_ERROR.items():
        assert cls.status == status


def test_manager_settings_table_matches_the_settings():
    """docs/control-plane.md "Manager settings" against control/settings.py: every setting
    documented once, with its default."""
    rows = _table_rows(_read("docs/control-plane.md"), "## Manager settings")
    doc = {var.strip("`"): default.split()[0] for var, default, *_ in rows}  # "604800.0 (7 days)"
    fields = ManagerSettings.defaults()
    code = {f"CARGOHOLD_MANAGER_{name.upper()}": str(d) for name, d in fields.items()}
    assert doc == code


def test_setting_values_quoted_in_prose_are_the_defaults():
    """Every "`setting` (N s)" in the docs about a manager setting gives its default."""
    defaults = ManagerSettings.defaults()
    seen = 0
    for path in sorted((ROOT / "docs").rglob("*.md")):
        for name, value in re.findall(r"`([a-z_]+)` \(([0-9.]+) s\)", path.read_text()):
            if name in defaults:
                seen += 1
                assert float(value) == defaults[name], f"{path.name}: {name} ({value} s)"
    assert seen >= 3  # the pattern still finds what it is meant to


def test_the_heartbeat_interval_in_the_architecture_picture():
    m = re.search(r"heartbeat every ([0-9.]+) s", _read("docs/architecture.md"))
    assert m is not None
    assert float(m.group(1)) == ManagerSettings.defaults()["heartbeat_interval"]


def test_readme_counts_the_fault_scenarios():
    from tests.e2e.fault_matrix import SCENARIOS

    m = re.search(r"fault matrix of (\d+) scenarios", " ".join(_read("README.md").split()))
    assert m is not None, "README no longer says how many fault scenarios there are"
    assert int(m.group(1)) == len(SCENARIOS)


# --- backups (issue 17): docs/formats/backup-repository.md and docs/backups.md ----------------


def _offset_rows(text: str, after: str) -> list[tuple[str, str, str]]:
    """(offset, size, field) of the first offset table after ``after``, indented or not."""
    rows: list[tuple[str, str, str]] = []
    for line in text[text.index(after) :].splitlines()[1:]:
        line = line.strip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) >= 3 and cells[0] != "offset" and not set(cells[0]) <= set("-: "):
                rows.append((cells[0], cells[1], cells[2]))
        elif rows:
            break
    return rows


def _backup_doc(rel: str = "docs/formats/backup-repository.md") -> str:
    return " ".join(_read(rel).split())  # prose wraps lines


def _mib(n: int) -> int:
    assert n % (1 << 20) == 0, n
    return n >> 20


def test_backup_object_table_names_every_kind_and_key():
    """The "Objects" table: one row per object kind of format.KINDS, keys as the code names them."""
    from cargohold.backup import catalog, format, gc, index, keys, leases, packs, repository

    rows = _table_rows(_read("docs/formats/backup-repository.md"), "## Objects")
    doc = {kind.strip("`"): key.strip("`") for key, kind, *_ in rows}
    assert sorted(doc) == sorted(k.decode() for k in format.KINDS)
    code = {
        "K": keys.KEY_OBJECT,
        "C": catalog.CATALOG,
        "M": repository.MANIFEST_PREFIX + "<backup id>",
        "I": index.PREFIX + "<32 hex>",
        "P": packs.PREFIX + "<2 hex>/<32 hex>",
        "L": leases.PREFIX + "<kind>-<32 hex>",
        "G": gc.PENDING,
    }
    assert doc == code
    kinds = re.search(r"kind: one of `([A-Z ]+)`", _read("docs/formats/backup-repository.md"))
    assert kinds and kinds.group(1).split() == [k.decode() for k in format.KINDS]


def test_backup_header_table_is_the_header_struct():
    from cargohold.backup import format

    text = _read("docs/formats/backup-repository.md")
    size = re.search(r"### The header \(every object, (\d+) bytes", text)
    assert size and int(size.group(1)) == format.HEADER_SIZE == format.HEADER.size
    rows = _offset_rows(text, "### The header")
    assert [(int(o), int(s)) for o, s, _ in rows] == [(0, 4), (4, 1), (5, 1), (6, 2)]
    assert f"magic `{format.MAGIC.decode()}`" in rows[0][2]
    assert f"format version ({format.VERSION})" in rows[2][2]
    assert format.READ_VERSIONS == {format.VERSION}  # the doc describes the one version read


def test_backup_sealed_object_and_key_object_tables():
    """Nonce and tag sizes, and the key object's layout, in bytes as the code writes them."""
    from cargohold.backup import format, keys

    text = _read("docs/formats/backup-repository.md")
    sealed = _offset_rows(text, "### A sealed object")
    assert sealed[0][:2] == ("0", str(format.HEADER_SIZE))
    assert sealed[1][:2] == (str(format.HEADER_SIZE), str(format.NONCE))
    assert sealed[2][0] == str(format.HEADER_SIZE + format.NONCE)
    assert sealed[3][1] == str(format.TAG)
    key = _offset_rows(text, "### The key object")
    assert [s for _, s, _ in key] == [str(format.HEADER_SIZE), "4", "P"] + [
        str(n) for n in (format.NONCE, keys.KEY_SIZE, format.TAG)
    ]
    assert [o for o, _, _ in key][3:] == [
        f"{format.HEADER_SIZE + 4}+P",
        f"{format.HEADER_SIZE + 4 + format.NONCE}+P",
        f"{format.HEADER_SIZE + 4 + format.NONCE + keys.KEY_SIZE}+P",
    ]
    assert f"`cell` ({format.CELL})" in key[2][2]


def test_backup_entry_tables_are_the_numpy_records():
    """The index entry, the pack trailer entry and the manifest's extents: sizes and offsets
    as format.INDEX_ENTRY, format.PACK_ENTRY and chunk_map.EXTENT lay them out."""
    from cargohold.backup import chunk_map, format

    text = _backup_doc()
    entry = re.search(r"N entries, sorted by chunk id, of (\d+) bytes", text)
    assert entry and int(entry.group(1)) == format.INDEX_ENTRY.itemsize
    rows = _offset_rows(_read("docs/formats/backup-repository.md"), "sorted by chunk id, of")
    offsets = sorted(off for _, off, *_ in format.INDEX_ENTRY.fields.values())
    assert [int(o) for o, _, _ in rows] == offsets
    sizes = [format.INDEX_ENTRY.fields[n][0].itemsize for n in format.INDEX_ENTRY.names]
    assert [int(s) for _, s, _ in rows] == sizes
    assert format.INDEX_ENTRY.fields["id"][0].itemsize == format.ID_SIZE

    pack = re.search(r"N entries of (\d+) bytes: chunk id \((\d+)\)", text)
    assert pack and int(pack.group(1)) == format.PACK_ENTRY.itemsize
    assert int(pack.group(2)) == format.ID_SIZE
    assert f"blob kind u8 ({format.BLOB_DATA} = data)" in text

    ext = re.search(r"\| 20\+32C \| (\d+) \u00d7 E \| extents", text)
    assert ext and int(ext.group(1)) == chunk_map.EXTENT.itemsize
    assert "sorted, disjoint, multiples of " + str(format.BLOCK) in text


def test_backup_chunking_packing_and_compression_figures():
    from cargohold.backup import chunk_map, format, packs, writer

    text = _backup_doc()
    cell = _mib(format.CELL)
    assert f"fixed grid of **{cell} MiB cells**" in text
    assert f"each lies inside one {cell} MiB cell" in text
    assert f"Why {cell} MiB" in text
    assert f"per GiB, {1024 // cell} chunks" in text
    lo, hi = _mib(packs.PACK_BYTES), _mib(packs.PACK_BYTES + format.CELL)
    assert f"once its blobs pass {lo} MiB (`packs.PACK_BYTES`): packs are {lo}-{hi} MiB" in text
    per_tib = re.search(r"a TiB of unique data is ~([0-9,]+) packs", text)
    assert per_tib is not None
    n = int(per_tib.group(1).replace(",", ""))
    assert (1 << 40) // (packs.PACK_BYTES + format.CELL) <= n <= (1 << 40) // packs.PACK_BYTES
    pct = round(writer.COMPRESS_KEEP * 100)
    assert f"(level {writer.COMPRESS_LEVEL}, kept only when ≤ {pct}% of the chunk)" in text
    assert f"grows past {chunk_map.FRAGMENTED} pieces" in text
    # random 96-bit nonces: 2^32 encryptions of a chunk each
    assert format.NONCE * 8 == 96 and "random 96-bit nonce" in text
    pib = (1 << 32) * format.CELL >> 50
    assert f"2^32 encryptions: {pib} PiB of {cell} MiB chunks" in text


def test_backup_key_and_lease_figures():
    from cargohold.backup import gc, keys, repository
    from cargohold.cli.backup_credentials import KEY_BYTES

    text = _backup_doc()
    assert keys.KEY_SIZE == KEY_BYTES
    assert f"The user keeps a {keys.KEY_SIZE}-byte key" in text
    assert f"random {keys.KEY_SIZE}-byte master key" in text
    ttl = re.search(r"every third of their TTL \((\d+) s for backups and restores\)", text)
    assert ttl and float(ttl.group(1)) == repository.LEASE_TTL
    skew = re.search(r"alive until its expiry plus (\d+) s", text)
    assert skew and float(skew.group(1)) == gc.SKEW
    users = _backup_doc("docs/backups.md")
    assert f"The key is {keys.KEY_SIZE} random bytes" in users
    assert f"{keys.KEY_SIZE} raw bytes, or their base64" in users


def test_backup_s3_request_figures_in_the_user_guide():
    """docs/backups.md's S3 sections against s3_target.py's constants."""
    from cargohold.backup import format, packs, s3_target

    text = _backup_doc("docs/backups.md")
    lo, hi = _mib(packs.PACK_BYTES), _mib(packs.PACK_BYTES + format.CELL)
    assert text.count(f"packs are {lo}-{hi} MiB") == 2
    big = _mib(s3_target.MULTIPART_THRESHOLD)
    assert f"only for objects above {big} MiB" in text
    part = _mib(s3_target.PART_SIZE)
    assert f"up to {big} MiB is a single PUT, above it a multipart upload of {part} MiB" in text
    assert f"`DeleteObjects`, {s3_target.DELETE_BATCH:,} keys a request" in text
    assert f"one DELETE per {s3_target.DELETE_BATCH:,} objects freed" in text
    assert (
        f"{s3_target.CONNECT_TIMEOUT:g} s to connect, {s3_target.READ_TIMEOUT:g} s without a "
        f"byte on an open connection, and up to {s3_target.MAX_ATTEMPTS} attempts"
    ) in text
    assert f"one ranged GET per {_mib(format.CELL)} MiB chunk" in text
