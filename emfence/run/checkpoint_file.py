"""The ``--checkpoint FILE`` side files: the incremental checkpoints written after the
full one in ``FILE`` (``FILE.deltas``, engine.checkpoint_delta), and which message
digests each checkpoint covers (``FILE.acks``), so that a restart recognises the broker's
redeliveries.

``FILE.deltas`` is a log of records appended in order, each ``EFD1``, its length (8
bytes, little-endian), its blake2b-128 and the delta (the bytes of an ``.npz``). A
restart applies the records that follow the full checkpoint in ``FILE`` (same chain id,
next place) up to the first torn or missing one; a new full checkpoint makes the log
stale (its records name the older chain) and the next append truncates it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import orjson

from emfence.run.options import split_digests
from engine.checkpoint_delta import apply_delta, chain_of
from engine.state import CheckpointError

_MAGIC = b"EFD1"
_HEAD = struct.Struct("<4sQ16s")  # magic, payload length, blake2b-128 of the payload


def file_digest(path: str | Path) -> str:
    """A file's blake2b-128 digest, hex (names a checkpoint file's entry in the acks file
    when the file was written before incremental checkpoints)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def acks_path(checkpoint: Path) -> Path:
    """Where the acks file of the checkpoint file ``checkpoint`` lives."""
    return checkpoint.with_name(checkpoint.name + ".acks")


def deltas_path(checkpoint: Path) -> Path:
    """Where the incremental checkpoints after the checkpoint file ``checkpoint`` live."""
    return checkpoint.with_name(checkpoint.name + ".deltas")


def write_acks_file(path: Path, entries: dict[str, set[bytes]]) -> None:
    """Write (fsynced, renamed into place) the digests each checkpoint covers."""
    # Version 2: each checkpoint's digests concatenated (16 bytes each), base64. Version
    # 1 listed them in hex, which cost ~0.2 s of Python per checkpoint at 40 000 digests.
    data = {h: base64.b64encode(b"".join(ds)).decode() for h, ds in entries.items()}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"version": 2, "checkpoints": data}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_deltas(path: Path, deltas: list[bytes], good_bytes: int) -> int:
    """Append ``deltas`` to the log at ``path`` after its first ``good_bytes`` (anything
    beyond, a torn record of a failed attempt or a stale log, is cut off), fsynced;
    returns the log's new length."""
    with open(path, "r+b" if good_bytes else "wb") as f:
        f.truncate(good_bytes)
        f.seek(good_bytes)
        for d in deltas:
            f.write(_HEAD.pack(_MAGIC, len(d), hashlib.blake2b(d, digest_size=16).digest()))
            f.write(d)
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    if not good_bytes:  # a new file: its name must be durable too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return size


def read_deltas(path: Path) -> list[bytes]:
    """The whole records of the log at ``path``, in order (none if it does not exist)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out, at = [], 0
    while at + _HEAD.size <= len(data):
        magic, n, digest = _HEAD.unpack_from(data, at)
        body = data[at + _HEAD.size: at + _HEAD.size + n]
        if magic != _MAGIC or len(body) != n or \
                hashlib.blake2b(body, digest_size=16).digest() != digest:
            break
        out.append(body)
        at += _HEAD.size + n
    return out


def load_chain(checkpoint: Path) -> tuple[dict[str, np.ndarray], str]:
    """The state a ``--checkpoint`` file and its deltas hold, as arrays, and its identity
    (the key of its digests in the acks file): ``chain id:place``, or for a file written
    before incremental checkpoints its digest."""
    try:
        with np.load(checkpoint, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"cannot read checkpoint: {exc}", str(checkpoint)) from exc
    chain = chain_of(arrays)
    if chain is None:
        return arrays, file_digest(checkpoint)
    for record in read_deltas(deltas_path(checkpoint)):
        with np.load(io.BytesIO(record), allow_pickle=False) as data:
            delta = {k: data[k] for k in data.files}
        nxt = chain_of(delta)
        if nxt is None or nxt[0] != chain[0] or nxt[1] != chain[1] + 1:
            break  # of an older chain: the log was not cut yet after a new full one
        apply_delta(arrays, delta)
        chain = nxt
    return arrays, f"{chain[0]}:{chain[1]}"


def read_covered(checkpoint: Path, identity: str | None = None) -> set[bytes]:
    """Digests of messages the checkpoint at ``checkpoint`` already contains (may be
    empty); ``identity``: :func:`load_chain`'s (None: the file's digest)."""
    p = acks_path(checkpoint)
    try:
        data = orjson.loads(p.read_bytes())
        entry = data["checkpoints"].get(identity or file_digest(checkpoint))
        if not entry:
            return set()
        if data.get("version") == 1:  # written by an earlier emfence
            return {bytes.fromhex(h) for h in entry}
        blob = base64.b64decode(entry, validate=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return split_digests(blob)
