"""On-disk feature cache: sharded safetensors keyed by image content hash, crash-safe, stale-proof.

Layout of a cache directory::

    CACHE/
      fingerprint.json        what produced the features (encoder id + revision, prompts, layer, pooling, dtype,
                              template); written once; a different setup raises StaleFeatureCacheError
      index.json              merged view {shard file -> keys, names}; a hint only: rebuilt from the shard headers
      path_hashes.json        memo (path, size, mtime) -> sha256, so re-runs do not re-hash unchanged files
      shards/
        r000-000000-<uid>.safetensors   tensor "features" (n, P, D) + header metadata {"keys": [...], "names": [...]}
        r001-000000-<uid>.safetensors   rank-tagged: every process writes its own shards, no locking needed

Each shard is written to `<name>.tmp`, fsync'ed and renamed, so a shard is either complete or absent; files not
ending in `.safetensors` (partial writes of a killed process) are ignored. The set of shards on disk *is* the
index, which makes resuming after `kill -9` and merging the output of several GPUs the same trivial operation.

Keys are the sha256 of the image file's bytes (renaming or moving images keeps their features; the same picture
under two names is computed once). When the questions contain `{prompt}`, the key also covers the generation
prompt (`feature_key`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from agiqa._files import sha256_file
from agiqa.errors import AgiqaError

logger = logging.getLogger(__name__)

FORMAT = "agiqa-semantic-cache-v1"
FINGERPRINT_FILE = "fingerprint.json"
INDEX_FILE = "index.json"
HASHES_FILE = "path_hashes.json"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".safetensors"
# Recorded for the user but not part of the identity of the features.
_INFORMATIONAL = frozenset({"created", "agiqa_version", "model_class", "storage_dtype", "format", "note"})


class StaleFeatureCacheError(AgiqaError):
    """The cache was built by a different encoder setup; reusing it would silently mix features."""


class MissingFeaturesError(AgiqaError, KeyError):
    """Some requested images have no features in the cache."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class FeatureCacheError(AgiqaError):
    """The directory is not a feature cache, or a shard is unreadable."""


def feature_key(content_hash: str, generation_prompt: str | None = None) -> str:
    """Cache key: the content hash, or a hash of (content hash, generation prompt) for `{prompt}` questions."""
    if generation_prompt is None:
        return content_hash
    return hashlib.sha256(f"{content_hash}\0{generation_prompt}".encode()).hexdigest()


def _normalise(fp: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(fp, sort_keys=True, default=str))


def fingerprint_diff(cached: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences of the identity fields of two fingerprints (empty = same features)."""
    a, b = _normalise(cached), _normalise(current)
    keys = sorted((set(a) | set(b)) - _INFORMATIONAL)
    return [f"{k}: cached {a.get(k)!r} != requested {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_fingerprint(path: Path) -> dict[str, Any]:
    try:
        fingerprint = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FeatureCacheError(f"{path} is unreadable ({err}); re-extract into a new folder") from err
    if not isinstance(fingerprint, dict):
        raise FeatureCacheError(f"{path} is not a feature-cache fingerprint (a JSON object); re-extract into a new "
                                "folder")
    return fingerprint


def _read_index_hint(path: Path) -> dict[str, dict]:
    """index.json's shard entries that are well formed; the others are re-read from their shard files."""
    try:
        shards = json.loads(path.read_text()).get("shards", {})
        if not isinstance(shards, dict):
            raise ValueError("'shards' is not an object")
    except (OSError, ValueError, AttributeError) as err:
        logger.warning("%s is unreadable (%s); rebuilding the index from the shard files", path, err)
        return {}
    return {name: entry for name, entry in shards.items() if _well_formed_entry(entry)}


def _well_formed_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("keys"), list) and isinstance(entry.get("names"), list)
            and len(entry["keys"]) == len(entry["names"]) and all(isinstance(k, str) for k in entry["keys"]))


def _read_hash_memo(path: Path) -> dict[str, list]:
    """The (path -> [size, mtime_ns, sha256]) memo; malformed entries are dropped (the files get hashed again)."""
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(memo, dict):
        return {}
    return {key: entry for key, entry in memo.items()
            if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str)}


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


class FeatureCache:
    """A directory of feature shards. Open an existing cache with `FeatureCache(path)`; create or check one against
    an encoder with `FeatureCache.create_or_open(path, encoder.fingerprint())`.

    Features come back as float32 tensors `(N, P, D)`, P = number of prompts, D = the LLM hidden size.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        fp_path = self.path / FINGERPRINT_FILE
        if not fp_path.is_file():
            raise FeatureCacheError(
                f"{self.path} is not a feature cache (no {FINGERPRINT_FILE}); create one with `agiqa features extract`"
            )
        self.fingerprint: dict[str, Any] = _read_fingerprint(fp_path)
        self._rows: dict[str, tuple[str, int]] = {}  # key -> (shard file name, row)
        self._names: dict[str, str] = {}
        self._shards: dict[str, list[str]] = {}  # shard file name -> keys
        self._loaded: tuple[str, dict[str, torch.Tensor]] | None = None
        self._hash_memo: dict[str, list] | None = None
        self.refresh()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create_or_open(cls, path: str | os.PathLike, fingerprint: dict[str, Any],
                       overwrite: bool = False) -> FeatureCache:
        """Open the cache at `path` if it was made with the same fingerprint, else create it.

        Raises `StaleFeatureCacheError` (listing what changed) when `path` holds features of another setup, unless
        `overwrite` (which deletes the cached features first).
        """
        path = Path(path)
        fp_path = path / FINGERPRINT_FILE
        if overwrite and fp_path.exists():
            cls.clear(path)
        if fp_path.exists():
            cache = cls(path)
            diff = fingerprint_diff(cache.fingerprint, fingerprint)
            if diff:
                raise StaleFeatureCacheError(
                    f"feature cache {path} holds features of a different setup ({len(cache)} images):\n  "
                    + "\n  ".join(diff)
                    + "\nUse a new output directory, or pass --overwrite (overwrite=True) to delete and recompute them."
                )
            return cache
        if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise FeatureCacheError(f"{path} exists, is not empty and is not a feature cache; choose another directory")
        (path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        record = dict(_normalise(fingerprint))
        record.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        record["format"] = FORMAT
        record.setdefault("storage_dtype", "float32" if record.get("dtype") == "fp32" else "float16")
        _atomic_write_json(fp_path, record)
        return cls(path)

    @staticmethod
    def clear(path: str | os.PathLike) -> None:
        """Delete a cache's own files (never anything else in the directory)."""
        path = Path(path)
        if not (path / FINGERPRINT_FILE).is_file():
            raise FeatureCacheError(f"{path} is not a feature cache; refusing to delete anything in it")
        shutil.rmtree(path / SHARD_DIR, ignore_errors=True)
        for name in (INDEX_FILE, HASHES_FILE, FINGERPRINT_FILE):
            (path / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ index
    @property
    def shard_dir(self) -> Path:
        return self.path / SHARD_DIR

    @property
    def prompts(self) -> list[str]:
        return list(self.fingerprint.get("prompts", []))

    def refresh(self) -> None:
        """(Re)build the index from the shard files on disk, using index.json for the shards it already lists."""
        hint: dict[str, dict] = {}
        index_path = self.path / INDEX_FILE
        if index_path.is_file():
            hint = _read_index_hint(index_path)
        self._rows.clear()
        self._names.clear()
        self._shards.clear()
        files = sorted(p.name for p in self.shard_dir.glob(f"*{SHARD_SUFFIX}")) if self.shard_dir.is_dir() else []
        for name in files:
            entry = hint.get(name)
            if entry is None:
                entry = self._read_header(self.shard_dir / name)
                if entry is None:
                    continue
            self._add(name, entry["keys"], entry["names"])

    def _read_header(self, path: Path) -> dict | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            return {"keys": json.loads(meta["keys"]), "names": json.loads(meta["names"])}
        except Exception as err:  # noqa: BLE001 - a foreign or damaged file must not make the whole cache unusable
            logger.warning("ignoring unreadable shard %s (%s)", path, err)
            return None

    def _add(self, shard: str, keys: list[str], names: list[str]) -> None:
        self._shards[shard] = list(keys)
        for row, (key, name) in enumerate(zip(keys, names)):
            if key not in self._rows:  # first shard wins; duplicates (two ranks, same picture) are identical
                self._rows[key] = (shard, row)
                self._names[key] = name

    def write_index(self) -> Path:
        """Write the merged index.json (rank 0 at the end of a run; safe to call any time)."""
        shards = {s: {"keys": keys, "names": [self._names.get(k, "") for k in keys]}
                  for s, keys in self._shards.items()}
        path = self.path / INDEX_FILE
        _atomic_write_json(path, {"format": FORMAT, "fingerprint": self.fingerprint, "count": len(self._rows),
                                  "shards": shards})
        return path

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def has(self, key: str) -> bool:
        return key in self._rows

    def keys(self) -> list[str]:
        return list(self._rows)

    def name_of(self, key: str) -> str | None:
        return self._names.get(key)

    @property
    def shards(self) -> list[str]:
        return list(self._shards)

    # ------------------------------------------------------------------ data
    def write_shard(self, keys: Sequence[str], names: Sequence[str], features: torch.Tensor, rank: int = 0) -> Path:
        """Atomically write one shard of `features` (n, P, D) for `keys` (content hashes) and `names`."""
        from safetensors.torch import save

        if features.ndim != 3 or features.shape[0] != len(keys) or len(keys) != len(names):
            raise ValueError(f"features {tuple(features.shape)} do not match {len(keys)} keys / {len(names)} names")
        n_prompts = len(self.prompts)
        if n_prompts and features.shape[1] != n_prompts:
            raise ValueError(f"features have {features.shape[1]} prompts, the cache {n_prompts}")
        dtype = getattr(torch, self.fingerprint.get("storage_dtype", "float32"))
        data = save({"features": features.detach().to("cpu", dtype).contiguous()},
                    metadata={"keys": json.dumps(list(keys)), "names": json.dumps(list(names)), "format": FORMAT})
        seq = sum(1 for s in self._shards if s.startswith(f"r{rank:03d}-"))
        name = f"r{rank:03d}-{seq:06d}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        # Temp name does not end in .safetensors, so a reader never picks up a half-written shard.
        _atomic_write_bytes(self.shard_dir / name, data)
        self._add(name, list(keys), list(names))
        return self.shard_dir / name

    def _shard_tensor(self, shard: str) -> torch.Tensor:
        from safetensors.torch import load_file

        if self._loaded is None or self._loaded[0] != shard:
            try:
                self._loaded = (shard, load_file(str(self.shard_dir / shard)))
            except Exception as err:  # noqa: BLE001
                raise FeatureCacheError(f"cannot read shard {self.shard_dir / shard}: {err}") from err
        return self._loaded[1]["features"]

    def get_many(self, keys: Sequence[str]) -> torch.Tensor:
        """Features for `keys`, in order, as float32 `(N, P, D)`; KeyError-style `MissingFeaturesError` if absent."""
        missing = [k for k in keys if k not in self._rows]
        if missing:
            raise MissingFeaturesError(f"{len(missing)} key(s) not in {self.path}: {missing[:5]}")
        if not keys:
            return torch.empty(0, len(self.prompts), int(self.fingerprint.get("feature_dim", 0)))
        out: list[torch.Tensor | None] = [None] * len(keys)
        by_shard: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            by_shard.setdefault(self._rows[key][0], []).append(i)
        for shard, positions in by_shard.items():
            tensor = self._shard_tensor(shard)
            rows = torch.tensor([self._rows[keys[i]][1] for i in positions])
            for i, feat in zip(positions, tensor.index_select(0, rows).float()):
                out[i] = feat
        return torch.stack(out)  # type: ignore[arg-type]

    def get(self, key: str) -> torch.Tensor:
        return self.get_many([key])[0]

    # ------------------------------------------------------------------ content hashes
    def content_hash(self, path: str | os.PathLike) -> str:
        """sha256 of the file, memoised on (absolute path, size, mtime) in memory; `save_hash_memo` persists it."""
        if self._hash_memo is None:
            self._hash_memo = _read_hash_memo(self.path / HASHES_FILE)
        st = os.stat(path)
        abspath = os.path.abspath(path)
        entry = self._hash_memo.get(abspath)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return entry[2]
        digest = sha256_file(path)
        self._hash_memo[abspath] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def save_hash_memo(self) -> None:
        if self._hash_memo:
            try:
                on_disk = _read_hash_memo(self.path / HASHES_FILE)  # merge with what other processes saved
                _atomic_write_json(self.path / HASHES_FILE, {**on_disk, **self._hash_memo})
            except OSError as err:  # read-only cache: the memo is only an optimisation
                logger.debug("cannot save %s: %s", HASHES_FILE, err)

    def info(self) -> dict[str, Any]:
        return {"path": str(self.path), "images": len(self), "shards": len(self._shards),
                "fingerprint": self.fingerprint}

    def iter_names(self) -> Iterable[tuple[str, str]]:
        return self._names.items()
