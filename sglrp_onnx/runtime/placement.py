"""Where ONNX Runtime really ran each node: a profiled run, read back.

With ``SessionOptions.enable_profiling`` ONNX Runtime writes a Chrome-trace JSON file; each node
run is an event with ``cat == "Node"``, a name ending in ``_kernel_time`` and ``args`` holding
``op_name``, ``provider`` and the input/output types and shapes (``input_type_shape``,
``output_type_shape``: lists of ``{dtype: shape}``). This is ONNX Runtime's own record of the
placement, after its graph partitioning and optimisation (fused nodes keep their provider).

The CUDA provider leaves small integer shape computations on the CPU on purpose; what must not be
on the CPU is float work (SPEC section 8): a node that reads or writes float tensors, other than
``Shape``/``Size`` (which read only a shape), and any copy of a float tensor between host and
device inside the graph (``MemcpyToHost``/``MemcpyFromHost``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field

from sglrp_onnx.errors import UnsupportedModelError, UsageError
from sglrp_onnx.runtime.providers import CPU, GPU_PROVIDERS

#: ``placement=`` / ``--verify-placement``: when to profile, and what a bad placement does.
#: auto: profile GPU sessions, warn; check: profile any session, warn; require: profile any
#: session, raise on float computation on the CPU of a GPU session; off: never profile.
PLACEMENT_POLICIES = ("auto", "check", "require", "off")

FLOAT_TYPES = {"float", "float16", "double", "bfloat16", "float8e4m3fn", "float8e5m2"}
#: Ops that read only the shape of their float input.
SHAPE_READERS = {"Shape", "Size"}
MEMCPY_OPS = {"MemcpyToHost", "MemcpyFromHost"}


@dataclass(frozen=True)
class NodeRun:
    """One node as run: its name, op type, provider, and whether it computes on float data."""

    name: str
    op_type: str
    provider: str
    float_compute: bool


@dataclass
class PlacementReport:
    """The node placement of one profiled run.

    Attributes:
        nodes: every node run, in run order.
        active: the provider the session runs on (``session.get_providers()[0]``).
    """

    nodes: list[NodeRun] = field(default_factory=list)
    active: str = CPU

    @property
    def by_provider(self) -> dict[str, int]:
        """Node count per provider."""
        return dict(Counter(node.provider for node in self.nodes))

    @property
    def on_gpu(self) -> bool:
        return self.active in GPU_PROVIDERS

    def float_on_cpu(self) -> list[NodeRun]:
        """Float computation left on the CPU while a GPU provider runs the session (empty on CPU sessions)."""
        if not self.on_gpu:
            return []
        return [n for n in self.nodes if n.provider == CPU and n.float_compute]

    def float_copies(self) -> list[NodeRun]:
        """Copies of float tensors between host and device inside the graph."""
        return [n for n in self.nodes if n.op_type in MEMCPY_OPS and n.float_compute]

    @property
    def ok(self) -> bool:
        """No float computation on the CPU and no float copies (always true on a CPU session)."""
        return not self.float_on_cpu() and not self.float_copies()

    def summary(self, limit: int = 8) -> str:
        """One paragraph: node counts per provider, and the offending nodes where there are any."""
        counts = ", ".join(f"{count} on {provider}" for provider, count in sorted(self.by_provider.items()))
        text = f"placement of {len(self.nodes)} node runs: {counts or 'none recorded'}"
        bad = self.float_on_cpu()
        if bad:
            ops = Counter(n.op_type for n in bad)
            names = ", ".join(f"{n.name} ({n.op_type})" for n in bad[:limit])
            more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
            text += (
                f"; FLOAT COMPUTATION ON THE CPU: {len(bad)} node(s) "
                f"({', '.join(f'{op} x{c}' for op, c in ops.most_common())}): {names}{more}"
            )
        copies = self.float_copies()
        if copies:
            text += f"; {len(copies)} float host/device copies inside the graph"
        if self.on_gpu and not bad and not copies:
            cpu_nodes = self.by_provider.get(CPU, 0)
            text += "; no float computation on the CPU" + (f" ({cpu_nodes} integer shape node(s) there, as expected)" if cpu_nodes else "")
        return text


def _computes_on_floats(op_type: str, inputs: list, outputs: list) -> bool:
    def has_float(items) -> bool:
        return any(isinstance(item, dict) and any(dtype in FLOAT_TYPES for dtype in item) for item in items or [])

    if has_float(outputs):
        return True
    return op_type not in SHAPE_READERS and has_float(inputs)


def parse_profile(events, active: str = CPU) -> PlacementReport:
    """A :class:`PlacementReport` from the events of an ONNX Runtime profile (the parsed JSON list)."""
    if isinstance(events, dict):  # some tools wrap the trace as {"traceEvents": [...]}
        events = events.get("traceEvents", [])
    nodes = []
    for event in events:
        if not isinstance(event, dict) or event.get("cat") != "Node":
            continue
        name = str(event.get("name", ""))
        args = event.get("args") or {}
        if not name.endswith("_kernel_time") or "provider" not in args:
            continue  # fence events of older versions, and session events
        op_type = str(args.get("op_name", "?"))
        nodes.append(
            NodeRun(
                name=name[: -len("_kernel_time")],
                op_type=op_type,
                provider=str(args["provider"]),
                float_compute=_computes_on_floats(op_type, args.get("input_type_shape"), args.get("output_type_shape")),
            )
        )
    return PlacementReport(nodes=nodes, active=active)


def read_profile(path) -> list:
    """The events of a profile file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def profiling_prefix() -> str:
    """A fresh file prefix for a profile in the temporary folder."""
    folder = tempfile.mkdtemp(prefix="sglrp-onnx-profile-")
    return os.path.join(folder, "profile")


def finish_profile(session, active: str) -> PlacementReport:
    """End the session's profiling, read the file, delete it, and return the placement."""
    path = session.end_profiling()
    try:
        return parse_profile(read_profile(path), active)
    finally:
        try:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass


def profile_for(policy: str) -> bool | None:
    """Whether to open the session with profiling (``None``: where a GPU provider is asked for)."""
    if policy not in PLACEMENT_POLICIES:
        raise UsageError(f"unknown placement policy {policy!r}; valid: {', '.join(PLACEMENT_POLICIES)}")
    return {"auto": None, "check": True, "require": True, "off": False}[policy]


def enforce(report: PlacementReport | None, policy: str) -> None:
    """Warn about (``auto``, ``check``) or refuse (``require``) float computation on the CPU of a
    GPU session and float copies inside the graph."""
    import warnings

    if report is None or report.ok:
        return
    if policy == "require":
        raise UnsupportedModelError(f"the model does not run wholly on {report.active}: {report.summary()}")
    warnings.warn(f"{report.active}: {report.summary()}", RuntimeWarning, stacklevel=3)
