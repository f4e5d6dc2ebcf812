"""The runtime's GPU side, tested on the CPU: provider option dictionaries, provider choice and
fallback reasons (a CUDA or TensorRT provider simulated by monkeypatching
``onnxruntime.get_available_providers``), placement read from ONNX Runtime's profile (a real
profiled CPU run and a synthetic profile with mixed providers), and IO binding with reused buffers.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sglrp_onnx.errors import UnsupportedModelError, UsageError
from sglrp_onnx.runtime import CPU, CUDA, TENSORRT, ExplainStep, Explainer, RuntimeOptions, parse_profile
from sglrp_onnx.runtime import placement as placement_module
from sglrp_onnx.runtime import providers as providers_module
from sglrp_onnx.runtime.binding import BoundBuffers
from sglrp_onnx.runtime.session import captured_output
from tiny_models import fake_augmented, fake_relevance

K, SIZE = 4, 8
pytestmark = pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="these tests simulate GPU providers on a CPU-only onnxruntime")


def named_fake():
    """The stand-in augmented model with every node named n0, n1, ... (profile events carry node names)."""
    model = fake_augmented(num_classes=K, size=SIZE)
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    return model


def batch(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


# -- provider options --------------------------------------------------------------------------------


def test_cuda_options_are_chosen_not_left_to_defaults():
    assert providers_module.cuda_provider_options(RuntimeOptions()) == {
        "device_id": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "use_tf32": "0",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }
    fast = providers_module.cuda_provider_options(
        RuntimeOptions(device_id=1, tf32=True, cuda_graph=True, gpu_mem_limit=2 << 30, conv_algo_search="DEFAULT")
    )
    assert fast["device_id"] == "1" and fast["use_tf32"] == "1" and fast["enable_cuda_graph"] == "1"
    assert fast["gpu_mem_limit"] == str(2 << 30) and fast["cudnn_conv_algo_search"] == "DEFAULT"
    extra = providers_module.cuda_provider_options(RuntimeOptions(extra={CUDA: {"prefer_nhwc": 1}}))
    assert extra["prefer_nhwc"] == "1"


def test_deterministic_mode_options():
    options = providers_module.cuda_provider_options(RuntimeOptions(deterministic=True))
    assert options["cudnn_conv_algo_search"] == "HEURISTIC" and options["use_tf32"] == "0"
    with pytest.raises(UsageError, match="TF32"):
        RuntimeOptions(deterministic=True, tf32=True)
    e = Explainer(fake_augmented(num_classes=K, size=SIZE), "cpu", deterministic=True)
    assert e.session.get_session_options().use_deterministic_compute
    assert e.runtime_options.deterministic
    with pytest.raises(UsageError, match="provider list"):
        Explainer(fake_augmented(num_classes=K, size=SIZE), [CPU], deterministic=True)


def test_tensorrt_options_and_chain(tmp_path):
    options = RuntimeOptions(provider="tensorrt", tensorrt_cache_dir=str(tmp_path), tensorrt_max_batch=32)
    chain = providers_module.provider_chain(options, [TENSORRT, CUDA, CPU], {"image": [1, 3, 8, 8], "target": [1]})
    assert [name for name, _ in chain] == [TENSORRT, CUDA, CPU]  # CUDA takes what TensorRT refuses
    trt = chain[0][1]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_timing_cache_path"] == str(tmp_path) and trt["trt_fp16_enable"] == "False"
    assert trt["trt_profile_min_shapes"] == "image:1x3x8x8,target:1"
    assert trt["trt_profile_max_shapes"] == "image:32x3x8x8,target:32"
    assert chain[1][1]["use_tf32"] == "0"
    assert [n for n, _ in providers_module.provider_chain(RuntimeOptions(), [CUDA, CPU])] == [CUDA, CPU]
    assert [n for n, _ in providers_module.provider_chain(RuntimeOptions(), [CPU])] == [CPU]
    assert [n for n, _ in providers_module.provider_chain(RuntimeOptions(provider="cpu"), [CUDA, CPU])] == [CPU]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"provider": "rocm"}, "unknown provider 'rocm'"),
        ({"conv_algo_search": "FAST"}, "cudnn_conv_algo_search"),
        ({"arena_extend_strategy": "grow"}, "arena_extend_strategy"),
        ({"device_id": -1}, "device_id"),
    ],
)
def test_bad_runtime_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        RuntimeOptions(**kwargs)


# -- why a provider is not used --------------------------------------------------------------------------


def test_cpu_package_reason():
    e = Explainer(fake_augmented(num_classes=K, size=SIZE))
    assert e.provider == CPU == e.session.get_providers()[0]
    assert "CPU package" in e.provider_note and "onnxruntime-gpu" in e.provider_note
    with pytest.raises(UsageError, match="CPU package.*onnxruntime-gpu"):
        Explainer(fake_augmented(num_classes=K, size=SIZE), "tensorrt")


def test_both_packages_installed_reason():
    reason = providers_module.missing_provider_reason(CUDA, [CPU], ["onnxruntime", "onnxruntime-gpu"])
    assert "both onnxruntime and onnxruntime-gpu" in reason and "uninstall both" in reason
    reason = providers_module.missing_provider_reason(TENSORRT, [CUDA, CPU], ["onnxruntime-gpu"])
    assert "no TensorRT provider" in reason


@pytest.fixture
def cuda_listed(monkeypatch):
    """onnxruntime claims a CUDA provider that cannot start (as onnxruntime-gpu on a machine
    without a GPU or CUDA libraries does): the session comes up on the CPU."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(providers_module, "driver_version", lambda: None)
    monkeypatch.setattr("sglrp_onnx.runtime.session.driver_version", lambda: None)
    monkeypatch.setattr("sglrp_onnx.runtime.session._PRELOAD_OUTPUT", ["Failed to load libcudnn.so.9: cannot open shared object file"])


@pytest.mark.filterwarnings("ignore:Specified provider")
@pytest.mark.filterwarnings("ignore:ONNX Runtime")
def test_auto_falls_back_and_says_why(cuda_listed):
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider is installed but not usable"):
        e = Explainer(fake_augmented(num_classes=K, size=SIZE))
    assert e.provider == CPU  # the truth, not what was asked for
    assert e.step.requested_provider == CUDA
    assert "no NVIDIA driver is loaded" in e.provider_note and "libcudnn.so.9" in e.provider_note
    assert e.placement is not None  # a GPU provider was asked for: the placement was checked
    assert set(e.placement.by_provider) == {CPU} and e.placement.ok
    x = batch(2)
    np.testing.assert_allclose(e.explain(x, [1, 2]).relevance, fake_relevance(x, np.array([1, 2])), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_asked_for_but_unusable_is_an_error(cuda_listed):
    with pytest.raises(UsageError, match="CUDAExecutionProvider was asked for but could not be used.*libcudnn"):
        Explainer(fake_augmented(num_classes=K, size=SIZE), "cuda")
    with pytest.raises(UsageError, match="no TensorRT provider"):
        Explainer(fake_augmented(num_classes=K, size=SIZE), "tensorrt")


def test_driver_checks():
    proc = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 06:54:38 UTC 2025\n"
    assert providers_module.parse_driver_version(proc) == (580, 65, 6)
    assert providers_module.parse_driver_version("575.57.08\n") == (575, 57, 8)
    assert providers_module.parse_driver_version("no driver") is None
    assert "needs NVIDIA driver >= 580" in providers_module.driver_problem("13.0", (575, 57, 8))
    assert providers_module.driver_problem("13.0", (580, 65, 6)) == ""
    assert providers_module.driver_problem("12.8", (550, 1)) == ""
    assert "no NVIDIA driver" in providers_module.driver_problem("13.0", None)


def test_runtime_fallback_of_onnxruntime_is_off():
    e = Explainer(fake_augmented(num_classes=K, size=SIZE), "cpu")
    assert e.session._enable_fallback is False  # InferenceSession would otherwise move to the CPU silently


def test_onnxruntime_warnings_are_passed_on():
    model = fake_augmented(num_classes=K, size=SIZE)
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused_weight"))
    with pytest.warns(RuntimeWarning, match="ONNX Runtime: .*unused_weight"):
        e = Explainer(model, "cpu")
    assert any("unused_weight" in line for line in e.step.messages)


def test_captured_output_sees_native_writes():
    with captured_output() as lines:
        os.write(2, b"[W:onnxruntime:, x.cc:1 f] native warning\n")
        print("python line")
    assert lines == ["[W:onnxruntime:, x.cc:1 f] native warning", "python line"]


# -- placement ----------------------------------------------------------------------------------------


def float_nodes_by_onnx(model) -> set[str]:
    """Independent reference: nodes with a float input or output, from ONNX shape inference
    (Shape/Size read only shapes)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    result = set()
    for node in inferred.graph.node:
        reads = node.op_type not in ("Shape", "Size") and any(types.get(n) in floats for n in node.input)
        if reads or any(types.get(n) in floats for n in node.output):
            result.add(node.name)
    return result


def test_profile_of_a_real_cpu_run():
    model = named_fake()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # one event per graph node
    e = Explainer(model, "cpu", placement="check", session_options=options)
    report = e.placement
    assert {n.name for n in report.nodes} == {n.name for n in model.graph.node}
    assert all(n.provider == CPU for n in report.nodes)
    assert {n.name for n in report.nodes if n.float_compute} == float_nodes_by_onnx(model)
    assert report.ok and report.float_on_cpu() == [] and "12 on CPUExecutionProvider" in report.summary()
    x = batch(3)  # profiling ended with the check; the session still runs
    np.testing.assert_allclose(e.explain(x, [0, 1, 2]).relevance, fake_relevance(x, np.array([0, 1, 2])), rtol=1e-6)


def synthetic_profile():
    def node(name, op, provider, inputs, outputs):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ph": "X", "dur": 5,
                "args": {"op_name": op, "provider": provider, "input_type_shape": inputs, "output_type_shape": outputs}}

    return [
        {"cat": "Session", "name": "session_initialization", "args": {}},
        node("conv", "Conv", CUDA, [{"float": [1, 3, 8, 8]}, {"float": [4, 3, 3, 3]}], [{"float": [1, 4, 8, 8]}]),
        {"cat": "Node", "name": "conv_fence_before", "args": {"op_name": "Conv"}},
        node("shape", "Shape", CPU, [{"float": [1, 4, 8, 8]}], [{"int64": [4]}]),
        node("gather", "Gather", CPU, [{"int64": [4]}, {"int64": []}], [{"int64": []}]),
        node("concat", "Concat", CPU, [{"int64": [1]}, {"int64": [1]}], [{"int64": [2]}]),
        node("back", "ConvTranspose", CPU, [{"float": [1, 4, 8, 8]}, {"float": [4, 3, 3, 3]}], [{"float": [1, 3, 8, 8]}]),
        node("argmax", "ArgMax", CPU, [{"float": [1, 10]}], [{"int64": [1]}]),
        node("copy", "MemcpyToHost", CUDA, [{"float": [1, 4, 8, 8]}], [{"float": [1, 4, 8, 8]}]),
        node("copy_shape", "MemcpyToHost", CUDA, [{"int64": [4]}], [{"int64": [4]}]),
        node("trt", "TRTKernel_graph_main_0", TENSORRT, [{"float": [1, 3, 8, 8]}], [{"float": [1, 10]}]),
    ]


def test_profile_with_mixed_providers(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(synthetic_profile()))
    report = parse_profile(placement_module.read_profile(path), active=CUDA)
    assert report.by_provider == {CUDA: 3, CPU: 5, TENSORRT: 1}
    assert [n.name for n in report.float_on_cpu()] == ["back", "argmax"]  # Shape reads only the shape
    assert [n.name for n in report.float_copies()] == ["copy"]
    assert not report.ok
    text = report.summary()
    assert "FLOAT COMPUTATION ON THE CPU: 2 node(s)" in text and "back (ConvTranspose)" in text
    assert "1 float host/device copies" in text
    with pytest.raises(UnsupportedModelError, match="does not run wholly on CUDAExecutionProvider.*back"):
        placement_module.enforce(report, "require")
    with pytest.warns(RuntimeWarning, match="FLOAT COMPUTATION ON THE CPU"):
        placement_module.enforce(report, "auto")
    # CPU nodes of a CPU session are not a problem; integer shape work on the CPU never is
    assert parse_profile(synthetic_profile(), active=CPU).float_on_cpu() == []
    clean = parse_profile([e for e in synthetic_profile() if e.get("name", "").split("_kernel")[0] not in ("back", "argmax", "copy")], CUDA)
    assert clean.ok and "3 integer shape node(s) there, as expected" in clean.summary()
    with pytest.raises(UsageError, match="placement policy"):
        placement_module.profile_for("sometimes")


# -- IO binding ------------------------------------------------------------------------------------------


def test_bound_buffers_are_reused_across_batches():
    model = fake_augmented(num_classes=K, size=SIZE)
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    names = [o.name for o in session.get_outputs()]
    buffers = BoundBuffers(session, "cpu", keep=2)
    x1, x2 = batch(3, seed=1), batch(3, seed=2)
    t = np.array([0, -1, 3], np.int64)
    first = buffers.run({"image": x1, "target": t}, names)
    addresses = buffers.buffer_addresses()
    second = buffers.run({"image": x2, "target": t}, names)
    assert buffers.buffer_addresses() == addresses and len(buffers) == 1  # same buffers, refilled
    for got, x in ((first, x1), (second, x2)):  # the first results were not overwritten by the second run
        want = dict(zip(names, session.run(names, {"image": x, "target": t})))
        for name in names:
            np.testing.assert_array_equal(got[name], want[name])
    buffers.run({"image": batch(2), "target": t[:2]}, names)
    buffers.run({"image": batch(1), "target": t[:1]}, names)
    assert len(buffers) == 2  # the oldest shape gave its buffers back


def test_fixed_batch_pads_to_one_size():
    model = fake_augmented(num_classes=K, size=SIZE)
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    step = ExplainStep(session, {p.key: p.value for p in model.metadata_props}, io_binding=True, fixed_batch=True)
    x = batch(5, seed=4)
    targets = [0, 1, 2, 3, -1]
    result = step.explain(x, targets, batch_size=2)
    assert len(step.buffers) == 1  # every run had shape [2, ...]: the last image was padded
    np.testing.assert_allclose(result.relevance, fake_relevance(x, result.explained_class), rtol=1e-6)
    assert step.explain(x[:1], [1]).explained_class.tolist() == [1]  # still one shape
    assert len(step.buffers) == 1
    with pytest.raises(UsageError, match="IO binding"):
        ExplainStep(session, {p.key: p.value for p in model.metadata_props}, io_binding=False, fixed_batch=True)


def test_cuda_graph_request_fixes_the_batch_on_any_provider():
    step = ExplainStep.open(fake_augmented(num_classes=K, size=SIZE), RuntimeOptions(provider="cpu", cuda_graph=True))
    assert step.fixed_batch and step.io_binding
    x = batch(3)
    np.testing.assert_allclose(step.explain(x, [2, 2, 2], batch_size=2).relevance, fake_relevance(x, np.array([2, 2, 2])), rtol=1e-6)


def test_unknown_placement_policy():
    with pytest.raises(UsageError, match="placement policy"):
        Explainer(fake_augmented(num_classes=K, size=SIZE), "cpu", placement="maybe")


def test_verify_placement_needs_a_profiling_session():
    step = ExplainStep.open(fake_augmented(num_classes=K, size=SIZE), "cpu", placement="off")
    assert step.placement is None
    with pytest.raises(UsageError, match="without profiling"):
        step.verify_placement()


# -- the explain command's provider flags ------------------------------------------------------------------


@pytest.fixture
def photo_and_model(tmp_path):
    from PIL import Image

    model = tmp_path / "fake.onnx"
    onnx.save(fake_augmented(num_classes=K, size=SIZE), model)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(photo)
    return model, photo, tmp_path / "out"


def test_explain_reports_provider_and_placement(photo_and_model, capsys):
    from sglrp_onnx.cli import main

    model, photo, out = photo_and_model
    assert main(["explain", str(model), str(photo), "--out", str(out), "--verify-placement", "--deterministic"]) == 0
    err = capsys.readouterr().err
    assert "provider: CPUExecutionProvider (using the CPU: this onnxruntime is the CPU package" in err
    assert "placement: placement of" in err and "on CPUExecutionProvider" in err


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_explain_with_an_unavailable_provider(photo_and_model, capsys, provider):
    from sglrp_onnx.cli import main

    model, photo, out = photo_and_model
    assert main(["explain", str(model), str(photo), "--out", str(out), "--provider", provider]) == 2
    assert "CPU package" in capsys.readouterr().err
