"""Content digests of input files: feature caches and resume checks key on what a file holds,
not on its name or time stamp."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_path(path: str | Path) -> str:
    """A file's sha256; for a folder (prepared shards), that of its manifest.json when it has
    one, else of its file names and sizes."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if (path / "manifest.json").is_file():
        return sha256_file(path / "manifest.json")
    listing = sorted(f"{p.relative_to(path)}:{p.stat().st_size}" for p in path.rglob("*") if p.is_file())
    return sha256_bytes("\n".join(listing).encode("utf-8"))
