"""ONNX Runtime sessions: which execution provider really runs, with which options, and why.

:func:`open_session` turns a provider request (``"auto"``, ``"cpu"``, ``"cuda"``, ``"tensorrt"``,
a :class:`~sglrp_onnx.runtime.providers.RuntimeOptions`, or a list as ``InferenceSession`` takes
it) into a session, and says why the provider asked for is not the one that runs:

- the provider is not in ``onnxruntime.get_available_providers()`` (the CPU package, or both
  packages installed over each other);
- it is listed but the session came up without it (ONNX Runtime drops a provider whose libraries
  do not load: no driver, a driver too old for the wheel's CUDA, missing CUDA/cuDNN/TensorRT
  libraries). ONNX Runtime only logs this; its log lines and the output of
  ``onnxruntime.preload_dlls()`` are captured while the session is made, used for the reason, and
  handed back (``OpenedSession.messages``) so that nothing it says is lost.

ONNX Runtime's Python ``InferenceSession`` also falls back to the CPU by itself when the GPU fails
at run time; that is switched off (``disable_fallback``), so a session never moves to another
provider behind the caller's back.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field

from sglrp_onnx.errors import ModelLoadError, UsageError
from sglrp_onnx.runtime.providers import (
    CPU,
    CUDA,
    GPU_PROVIDERS,
    TENSORRT,
    RuntimeOptions,
    driver_version,
    missing_provider_reason,
    provider_chain,
    unusable_provider_reason,
    wanted_provider,
)
from sglrp_onnx.runtime.placement import profiling_prefix

_PRELOAD_OUTPUT: list[str] | None = None
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class OpenedSession:
    """A session, the provider it runs on, why that is not the one asked for, and ONNX Runtime's messages.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        requested: the provider asked for (automatic choice: CUDA where onnxruntime has it).
        note: why ``provider`` is not ``requested`` ("" when it is).
        messages: warnings and errors ONNX Runtime logged (or ``preload_dlls`` printed) while the
            session was made.
        profiling: the session records a profile (see :mod:`sglrp_onnx.runtime.placement`).
    """

    session: object
    requested: str = CPU
    note: str = ""
    messages: list[str] = field(default_factory=list)
    profiling: bool = False
    fell_back: bool = False

    def report(self) -> None:
        """Pass on what ONNX Runtime logged (as ``RuntimeWarning``), and why a listed GPU provider
        could not be used."""
        import warnings

        for line in self.messages:
            if is_log_warning(line):
                warnings.warn(f"ONNX Runtime: {line}", RuntimeWarning, stacklevel=3)
        if self.fell_back:
            warnings.warn(self.note, RuntimeWarning, stacklevel=3)

    @property
    def provider(self) -> str:
        """The provider that runs the session, as the session itself reports it."""
        return self.session.get_providers()[0]


@contextlib.contextmanager
def captured_output():
    """Collect what is written to stdout/stderr, by Python and by native code (ONNX Runtime's logger
    writes to file descriptor 2), into the yielded list of lines."""
    lines: list[str] = []
    python_out, python_err = io.StringIO(), io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no usable descriptors: capture the Python side only
        saved = None
    sink = tempfile.TemporaryFile()
    try:
        if saved:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        with contextlib.redirect_stdout(python_out), contextlib.redirect_stderr(python_err):
            yield lines
    finally:
        if saved:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        sink.seek(0)
        text = sink.read().decode("utf-8", errors="replace")
        sink.close()
        for chunk in (text, python_out.getvalue(), python_err.getvalue()):
            chunk = _ANSI_ESCAPE.sub("", chunk)  # ONNX Runtime colours its log lines on terminals
            lines.extend(line.rstrip() for line in chunk.splitlines() if line.strip())


def preload_cuda_libraries() -> list[str]:
    """Let onnxruntime-gpu find CUDA/cuDNN installed from PyPI (the nvidia-* wheels), once.

    ``onnxruntime.preload_dlls()`` (ONNX Runtime 1.21 and later) loads them from the nvidia site
    packages or the default library path; what it prints (libraries it could not load) is returned.
    """
    global _PRELOAD_OUTPUT
    if _PRELOAD_OUTPUT is not None:
        return _PRELOAD_OUTPUT
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        _PRELOAD_OUTPUT = []
        return _PRELOAD_OUTPUT
    with captured_output() as lines:
        try:
            preload()
        except Exception as error:  # noqa: BLE001 - the libraries may come from the system instead
            print(f"preload_dlls failed: {error}")
    _PRELOAD_OUTPUT = lines
    return lines


def runtime_options(providers) -> RuntimeOptions | list:
    """A provider request as :class:`RuntimeOptions`, or a list given as it is."""
    if providers is None:
        return RuntimeOptions()
    if isinstance(providers, RuntimeOptions):
        return providers
    if isinstance(providers, str):
        key = providers.lower()
        aliases = {"gpu": "cuda", CPU.lower(): "cpu", CUDA.lower(): "cuda", TENSORRT.lower(): "tensorrt"}
        return RuntimeOptions(provider=aliases.get(key, key))
    return list(providers)


def model_source(proto, path):
    """What the session reads: the bytes of the checked model, or its file where it has external data.

    ONNX Runtime gets the bytes of the model that was checked, not the path to read again; only a
    model over the protobuf limit (external data) is opened from its file.
    """
    from sglrp_onnx.io import MAX_PROTOBUF_BYTES

    too_big = proto.ByteSize() > MAX_PROTOBUF_BYTES
    return os.fspath(path) if (path is not None and too_big) else proto.SerializeToString()


def is_log_warning(line: str) -> bool:
    """Whether a captured line is one of ONNX Runtime's warnings or errors (``[W:onnxruntime...``)."""
    return any(tag in line for tag in ("[W:", "[E:", "[F:")) or "Failed to load" in line or "warning" in line.lower()


def open_session(source, providers=None, session_options=None, *, profile: bool | None = None,
                 shape_profile: dict | None = None, model_versions: tuple[int, int] | None = None) -> OpenedSession:
    """A session on the provider asked for; CUDA first when automatic.

    Args:
        source: the model's bytes or file path.
        providers: see :func:`runtime_options`.
        session_options: an ``onnxruntime.SessionOptions`` (default: warnings logged, deterministic
            compute as asked). Profiling and deterministic compute are set on it where asked for.
        profile: record a profile (placement check); ``None``: only where a GPU provider is asked for.
        shape_profile: TensorRT's shape profile (input name -> shape at batch 1).
        model_versions: (opset, IR version) of the model, named in a load error.

    Raises:
        UsageError: a provider asked for by name (cuda, tensorrt) is not available or not usable;
            the message says why.
        ModelLoadError: ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort

    request = runtime_options(providers)
    available = list(ort.get_available_providers())
    if isinstance(request, list):
        chain = request
        names = [p[0] if isinstance(p, tuple) else p for p in chain]
        wanted = names[0] if names else CPU
        explicit = True
        if wanted not in available:
            raise UsageError(f"the {wanted} was asked for but {missing_provider_reason(wanted, available)}")
    else:
        wanted = wanted_provider(request)
        explicit = request.provider != "auto"
        if explicit and wanted not in available:
            raise UsageError(f"the {wanted} was asked for but {missing_provider_reason(wanted, available)}")
        chain = provider_chain(request, available, shape_profile)
    note = ""
    if not explicit and wanted not in available:
        note = f"using the CPU: {missing_provider_reason(wanted, available)}"
        wanted = CPU
    on_gpu = wanted in GPU_PROVIDERS
    messages = preload_cuda_libraries() if on_gpu else []
    options = session_options if session_options is not None else _default_session_options(ort)
    if isinstance(request, RuntimeOptions) and request.deterministic:
        options.use_deterministic_compute = True
    profiling = on_gpu if profile is None else bool(profile)
    if profiling:
        options.enable_profiling = True
        options.profile_file_prefix = profiling_prefix()
    with captured_output() as lines:
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=chain)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types
            load_error = error
        else:
            load_error = None
    messages = [line for line in [*messages, *lines] if line]
    if load_error is not None:
        if profiling:  # no session: its profile folder stays empty
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(options.profile_file_prefix))
        versions = f" (the model: opset {model_versions[0]}, IR version {model_versions[1]})" if model_versions else ""
        log = f"; ONNX Runtime logged: {' | '.join(messages[-3:])}" if messages else ""
        hint = ""
        if isinstance(request, RuntimeOptions) and request.cuda_graph:
            hint = ("; CUDA graphs need every float node on CUDA (no host/device copies): try without "
                    "cuda_graph and look at the placement (--verify-placement)")
        raise ModelLoadError(
            f"ONNX Runtime {ort.__version__} cannot load the model{versions}: {load_error}{log}{hint}"
        ) from None
    session.disable_fallback()  # never switch providers silently at run time
    opened = OpenedSession(session, requested=wanted, messages=messages, profiling=profiling)
    if opened.provider != wanted:
        reason = unusable_provider_reason(wanted, messages, getattr(ort, "cuda_version", None), driver_version())
        if explicit:
            raise UsageError(f"the {wanted} was asked for but could not be used: {reason}")
        note = f"using {opened.provider}: {reason}"
        opened.fell_back = True
    opened.note = note
    return opened


_shared_arena_registered = False


def shared_arena_options():
    """New session options whose CPU tensors come from one arena that every session made with
    such options shares (ONNX Runtime's environment allocator, ``session.use_env_allocators``).

    For sessions that run one after the other in one process (``explain --compare``: LRP, CLRP
    and SGLRP of one model), the arena then grows to what the largest run needs instead of
    one arena per session."""
    global _shared_arena_registered
    import onnxruntime as ort

    if not _shared_arena_registered:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, None)
        _shared_arena_registered = True
    options = _default_session_options(ort)
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def _default_session_options(ort):
    options = ort.SessionOptions()
    options.log_severity_level = 2  # warnings are captured and reported, not hidden
    return options


def cuda_device_id(session) -> int:
    """The CUDA device a session runs on (0 where it does not say)."""
    try:
        options = session.get_provider_options()
        for name in (CUDA, TENSORRT):
            if name in options and "device_id" in options[name]:
                return int(options[name]["device_id"])
    except Exception:  # noqa: BLE001
        pass
    return 0
