"""Where an edge node keeps the bundles the coordinator delivers, and how it installs one safely.

The coordinator sends the newest edge bundle in an ``evaluate.edge`` message
(``protos.records.bundle_record``) whenever it does not know the node to hold
it. The node trusts nothing it received: every path must stay inside the
bundle, the files must be exactly those the manifest lists (plus the manifest),
each must match its manifest hash and size (`models.edge_bundle.load_bundle`),
and the manifest's own hash must be the one the coordinator named (the hash on
the ledger). Only then is the directory renamed into the store, so a node that
crashes mid-install keeps its previous bundle and never serves a half-written
one. The store keeps the newest `KEEP` bundles and removes older ones.

The store is ``<store>/<manifest sha256>/``. Its root is the node config's
``edge-bundle-dir`` when the operator set one; in simulation it is beside the
run's node keys (``<out>/node-bundles/partition-N``); otherwise
``$XDG_CACHE_HOME/sentinel/edge-bundles/<node key id>`` (``~/.cache`` by default).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from sentinel.client.node import node_local_dir
from sentinel.models.edge_bundle import MANIFEST_FILE, BundleError, BundleFile, BundleManifest, load_bundle

__all__ = ["KEEP", "MAX_BUNDLE_BYTES", "bundle_store_dir", "install_bundle", "installed_bundle"]

KEEP = 2
"""Bundles a node's store keeps: the newest and the one before (a node may be asked about either while a round commits)."""
MAX_BUNDLE_BYTES = 4 << 30
"""The most bytes a delivered bundle may have in all (4 GiB): a bound on what a node writes to its disk."""


def bundle_store_dir(configured: str | None, node_keys: str | None, partition_id: int, key_id: str) -> Path:
    """The directory a node keeps delivered bundles in (module docstring: configured, simulation, or user cache)."""
    return node_local_dir(configured, node_keys, partition_id, "node-bundles", "edge-bundles", key_id)


def installed_bundle(store: Path, manifest_sha256: str) -> Path | None:
    """The verified bundle ``manifest_sha256`` in ``store``, or None when it is not there (or no longer intact)."""
    if not _is_hex_digest(manifest_sha256):
        raise BundleError(f"bundle hash {manifest_sha256!r} is not a hex sha256")
    directory = store / manifest_sha256
    if not directory.is_dir():
        return None
    try:
        bundle = load_bundle(directory)
    except BundleError:
        return None
    return directory if bundle.manifest_sha256 == manifest_sha256 else None


def install_bundle(store: Path, manifest_sha256: str, files: Mapping[str, bytes]) -> Path:
    """Verify the delivered ``files`` as the bundle ``manifest_sha256`` and install it in ``store``; returns its directory.

    Raises `BundleError` naming what is wrong (a path leaving the bundle, a file
    the manifest does not list or one it lists that is missing, a hash or size
    mismatch, a manifest whose hash is not the one named, a bundle too large).
    An already installed, intact copy is kept as is.
    """
    existing = installed_bundle(store, manifest_sha256)
    if existing is not None:
        return existing
    _checked_manifest(manifest_sha256, files)
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest_sha256[:12]}.", suffix=".tmp", dir=store))
    try:
        for path, data in files.items():
            target = staging / PurePosixPath(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        load_bundle(staging)  # every file against its manifest entry
        os.chmod(staging, 0o755)
        target = store / manifest_sha256
        if target.exists():  # a damaged earlier copy (installed_bundle refused it)
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _prune(store, keep=manifest_sha256)
    return target


def _is_hex_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _checked_manifest(manifest_sha256: str, files: Mapping[str, bytes]) -> BundleManifest:
    """The delivered manifest, once its hash, its file list and the delivered paths and sizes agree."""
    if not _is_hex_digest(manifest_sha256):
        raise BundleError(f"bundle hash {manifest_sha256!r} is not a hex sha256")
    for path in files:
        BundleFile.model_validate({"path": path, "sha256": "0" * 64, "bytes": 0})  # path stays inside the bundle
    total = sum(len(data) for data in files.values())
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(f"delivered bundle has {total} bytes, more than the {MAX_BUNDLE_BYTES} a node accepts")
    raw = files.get(MANIFEST_FILE)
    if raw is None:
        raise BundleError(f"delivered bundle has no {MANIFEST_FILE}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != manifest_sha256:
        raise BundleError(f"delivered manifest hashes to {digest}, the coordinator named {manifest_sha256}")
    try:
        manifest = BundleManifest.model_validate_json(raw)
    except ValueError as e:
        raise BundleError(f"delivered manifest is invalid: {e}") from e
    listed = {f.path for f in manifest.files}
    delivered = set(files) - {MANIFEST_FILE}
    if missing := sorted(listed - delivered):
        raise BundleError(f"delivered bundle lacks {missing[:3]} (listed in its manifest)")
    if extra := sorted(delivered - listed):
        raise BundleError(f"delivered bundle has files its manifest does not list: {extra[:3]}")
    return manifest


def _prune(store: Path, keep: str) -> None:
    """Remove all but the newest `KEEP` installed bundles (``keep`` always stays); stale staging dirs go too."""
    bundles = sorted(
        (d for d in store.iterdir() if d.is_dir() and _is_hex_digest(d.name)),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    kept = {keep, *[d.name for d in bundles if d.name != keep][: KEEP - 1]}
    for d in bundles:
        if d.name not in kept:
            shutil.rmtree(d, ignore_errors=True)
