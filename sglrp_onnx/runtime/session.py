"""ONNX Runtime sessions: which execution provider, with which options, and why.

``open_session`` turns a provider request (``"auto"``, ``"cpu"``, ``"cuda"`` or a list as
``onnxruntime.InferenceSession`` takes it) into a session and reports the provider that really
runs it (``session.get_providers()[0]``), with a note where it is not the one asked for.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

from sglrp_onnx.errors import ModelLoadError, UsageError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_CUDA_PRELOADED = False


@dataclass
class OpenedSession:
    """A session, the provider that runs it, and why it is not the one asked for (``note``)."""

    session: object
    provider: str
    note: str = ""


def preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN installed from PyPI (nvidia-* wheels); best effort, once."""
    global _CUDA_PRELOADED
    if _CUDA_PRELOADED:
        return
    _CUDA_PRELOADED = True
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            preload()
    except Exception:  # noqa: BLE001 - the libraries may come from the system instead
        pass


def provider_list(providers) -> list | None:
    """The provider list for ``InferenceSession`` (``None`` for automatic choice)."""
    if providers is None or providers == "auto":
        return None
    if isinstance(providers, str):
        key = providers.lower()
        if key in ("cpu", CPU.lower()):
            return [CPU]
        if key in ("cuda", "gpu", CUDA.lower()):
            return [CUDA, CPU]
        return [providers]
    return list(providers)


def model_source(proto, path):
    """What the session reads: the bytes of the checked model, or its file where it has external data.

    ONNX Runtime gets the bytes of the model that was checked, not the path to read again; only a
    model over the protobuf limit (external data) is opened from its file.
    """
    from sglrp_onnx.io import MAX_PROTOBUF_BYTES

    too_big = proto.ByteSize() > MAX_PROTOBUF_BYTES
    return os.fspath(path) if (path is not None and too_big) else proto.SerializeToString()


def open_session(source, providers=None, session_options=None) -> OpenedSession:
    """A session on the provider asked for (see :func:`provider_list`), CUDA first when automatic.

    Raises:
        UsageError: CUDA asked for but not available or not usable.
        ModelLoadError: ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort

    options = session_options
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    wanted = provider_list(providers)
    available = ort.get_available_providers()

    def make(provider_list_):
        try:
            return ort.InferenceSession(source, sess_options=options, providers=provider_list_)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {error}") from None

    names = [p[0] if isinstance(p, tuple) else p for p in (wanted or [])]
    if CUDA in available and (wanted is None or CUDA in names):
        preload_cuda_libraries()
    if wanted is None:
        note = ""
        if CUDA in available:
            try:
                session = ort.InferenceSession(source, sess_options=options, providers=[CUDA, CPU])
                if session.get_providers()[0] == CUDA:
                    return OpenedSession(session, CUDA)
                note = "onnxruntime-gpu is installed but CUDA is not usable here"
            except Exception as error:  # noqa: BLE001
                note = f"CUDA session failed ({error}); using the CPU"
        session = make([CPU])
        return OpenedSession(session, session.get_providers()[0], note)
    if CUDA in names and CUDA not in available:
        raise UsageError(
            "the CUDA provider was asked for but this onnxruntime has none "
            f"(available: {', '.join(available)}); install onnxruntime-gpu instead of onnxruntime"
        )
    session = make(wanted)
    active = session.get_providers()[0]
    if names and names[0] == CUDA and active != CUDA:
        raise UsageError("the CUDA provider was asked for but could not be used (no GPU or CUDA libraries?)")
    return OpenedSession(session, active)


def cuda_device_id(session) -> int:
    """The CUDA device a session runs on (0 where it does not say)."""
    try:
        return int(session.get_provider_options().get(CUDA, {}).get("device_id", 0))
    except Exception:  # noqa: BLE001
        return 0
