"""Convert a plain classifier on the fly and keep the converted file in a cache.

The cache key is a hash of the model bytes, the conversion options and the engine version, so a
changed model, option or engine converts again. Cache entries are read with the same safety checks
as any model file, and a damaged entry is rebuilt. Caching is best effort: an unwritable folder
gives a warning, not an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from sglrp_onnx.errors import UsageError
from sglrp_onnx.runtime.contract import is_augmented


def default_cache_dir() -> Path:
    """Where converted models are cached: ``$SGLRP_ONNX_CACHE``, else ``$XDG_CACHE_HOME/sglrp-onnx``,
    else ``~/.cache/sglrp-onnx``."""
    env = os.environ.get("SGLRP_ONNX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sglrp-onnx"


def cache_key(proto, options: dict, engine: str) -> str:
    """The cache file's stem: a hash of the model bytes, the options and the engine version."""
    digest = hashlib.sha256()
    digest.update(proto.SerializeToString())
    digest.update(json.dumps({"engine": engine, "options": options}, sort_keys=True, default=repr).encode())
    return digest.hexdigest()[:32]


def convert_cached(proto, options: dict, cache: bool = True, cache_dir=None):
    """``(converted ModelProto, cache file or None)``: ``sglrp_onnx.convert(proto, **options)``,
    taken from the cache where an entry exists, else converted and stored there (when ``cache``)."""
    import sglrp_onnx

    convert = getattr(sglrp_onnx, "convert", None)
    if convert is None:  # pragma: no cover - only while the engine is missing
        raise UsageError("this installation of sglrp_onnx has no convert(); cannot convert the model")
    cache_file = None
    if cache:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache_file = folder / f"{cache_key(proto, options, getattr(sglrp_onnx, '__version__', 'unknown'))}.onnx"
        cached = _read_entry(cache_file)
        if cached is not None:
            return cached, cache_file
    converted = convert(proto, **options)
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            sglrp_onnx.save(converted, cache_file, force=True)
            return converted, cache_file
        except Exception as error:  # noqa: BLE001 - caching is best effort
            warnings.warn(f"could not cache the converted model in {cache_file.parent}: {error}", stacklevel=3)
    return converted, None


def _read_entry(cache_file: Path):
    """The cached model, or ``None`` when there is no usable entry (a damaged one is rebuilt)."""
    if not cache_file.is_file():
        return None
    from sglrp_onnx.io import load_model

    try:
        cached = load_model(cache_file)  # cache files are files too: same safety checks
    except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
        return None
    return cached if is_augmented(cached) else None
