"""Nothing lost: outputs are written atomically, failures leave no file (and no temporary file),
and an existing output is never touched without --force."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sglrp_onnx
from sglrp_onnx import io as sio
from sglrp_onnx.cli import main
from sglrp_onnx.errors import OutputError

OLD = b"the user's precious old file\n"


def classifier(middle_op: str = "Relu") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.5, (5, 4)).astype(np.float32), "wf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node(middle_op, ["c"], ["r"], name="mid"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf"], ["scores"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "lost", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "in" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(classifier().SerializeToString())
    return path


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


def snapshot(path: Path):
    info = path.stat()
    return path.read_bytes(), info.st_mtime_ns, info.st_ino


# -- the command line -----------------------------------------------------------------------------


def test_existing_output_without_force_is_untouched(capsys, model_path, out_dir, monkeypatch):
    out = out_dir / "out.onnx"
    out.write_bytes(OLD)
    before = snapshot(out)
    calls = []
    real_convert = sglrp_onnx.convert
    monkeypatch.setattr(sglrp_onnx, "convert", lambda *a, **k: calls.append(1) or real_convert(*a, **k))
    code, stdout, err = run(capsys, "convert", model_path, "-o", out, "--preset", "raw")
    assert code == 8
    assert err.strip() == f"error: {out}: already exists (use --force / force=True to overwrite)"
    assert stdout == ""
    assert snapshot(out) == before
    assert calls == [], "the conversion ran although its output could not be written"
    assert leftovers(out_dir) == []


def test_force_replaces_the_output(capsys, model_path, out_dir):
    out = out_dir / "out.onnx"
    out.write_bytes(OLD)
    code, stdout, err = run(capsys, "convert", model_path, "-o", out, "--preset", "raw", "--force")
    assert code == 0, err
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    assert {"logits", "explained_class", "relevance"} <= {o.name for o in written.graph.output}
    assert leftovers(out_dir) == []
    assert '"method": "sglrp"' in stdout


def test_converting_in_place_needs_force(capsys, model_path):
    before = snapshot(model_path)
    code, _, err = run(capsys, "convert", model_path, "-o", model_path, "--preset", "raw")
    assert code == 8 and "already exists" in err
    assert snapshot(model_path) == before
    code, _, err = run(capsys, "convert", model_path, "-o", model_path, "--preset", "raw", "--force")
    assert code == 0, err
    assert "relevance" in [o.name for o in onnx.load(model_path).graph.output]
    assert leftovers(model_path.parent) == []


@pytest.mark.parametrize("existing", [False, True])
def test_failed_conversion_leaves_nothing(capsys, tmp_path, out_dir, existing):
    """An unsupported operator stops the conversion: no new file, no temporary file, and an
    existing output (even with --force) keeps its bytes."""
    source = tmp_path / "sin.onnx"
    source.write_bytes(classifier(middle_op="Sin").SerializeToString())
    out = out_dir / "out.onnx"
    if existing:
        out.write_bytes(OLD)
        before = snapshot(out)
    code, stdout, err = run(capsys, "convert", source, "-o", out, "--preset", "raw", "--force")
    assert code == 5 and "Sin" in err
    assert stdout == ""
    if existing:
        assert snapshot(out) == before
        assert sorted(p.name for p in out_dir.iterdir()) == ["out.onnx"]
    else:
        assert list(out_dir.iterdir()) == []


def test_failure_while_writing_leaves_nothing(capsys, model_path, out_dir, monkeypatch):
    """Disk full during the write: exit 8, no output, no temporary file; an old output survives."""
    out = out_dir / "out.onnx"
    out.write_bytes(OLD)
    before = snapshot(out)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sio.os, "fsync", disk_full)
    code, _, err = run(capsys, "convert", model_path, "-o", out, "--preset", "raw", "--force")
    assert code == 8
    assert f"{out}: cannot write: No space left on device" in err
    assert snapshot(out) == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.onnx"]


@pytest.mark.parametrize("case", ["missing_folder", "folder_is_a_file", "output_is_a_folder"])
def test_output_folder_problems(capsys, model_path, tmp_path, case):
    if case == "missing_folder":
        out, needle = tmp_path / "nowhere" / "out.onnx", "does not exist"
    elif case == "folder_is_a_file":
        (tmp_path / "plain").write_bytes(b"x")
        out, needle = tmp_path / "plain" / "out.onnx", "is not a folder"
    else:
        (tmp_path / "results").mkdir()
        out, needle = tmp_path / "results", "is a folder"
    code, _, err = run(capsys, "convert", model_path, "-o", out, "--preset", "raw", "--force")
    assert code == 8
    assert err.startswith(f"error: {out}") and needle in err and len(err.strip().splitlines()) == 1


def test_unwritable_folder(capsys, model_path, out_dir, monkeypatch):
    """A folder we may not write into (simulated: root may write anywhere) gives exit 8."""
    real_access = os.access
    monkeypatch.setattr(sio.os, "access", lambda p, mode: False if Path(p) == out_dir else real_access(p, mode))
    code, _, err = run(capsys, "convert", model_path, "-o", out_dir / "out.onnx", "--preset", "raw")
    assert code == 8 and "permission denied" in err and str(out_dir) in err
    assert list(out_dir.iterdir()) == []


def test_temp_file_creation_refused(model_path, out_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(sio.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match="Permission denied"):
        sglrp_onnx.save(sglrp_onnx.convert(model_path, preset="raw"), out_dir / "out.onnx")
    assert list(out_dir.iterdir()) == []


# -- the API and atomic_write_bytes ----------------------------------------------------------------


def test_save_refuses_existing_file_and_force_replaces(model_path, out_dir):
    converted = sglrp_onnx.convert(model_path, preset="raw")
    out = out_dir / "out.onnx"
    out.write_bytes(OLD)
    with pytest.raises(OutputError, match="already exists"):
        sglrp_onnx.save(converted, out)
    assert out.read_bytes() == OLD
    sglrp_onnx.save(converted, out, force=True)
    assert onnx.load(out).SerializeToString() == converted.SerializeToString()
    assert leftovers(out_dir) == []


def test_atomic_write_new_file_and_permissions(out_dir):
    old_mask = os.umask(0o027)
    try:
        path = sio.atomic_write_bytes(out_dir / "data.bin", b"payload")
    finally:
        os.umask(old_mask)
    assert path.read_bytes() == b"payload"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not the temporary file's 0600
    assert leftovers(out_dir) == []


def test_atomic_write_never_replaces_a_file_that_appears_meanwhile(out_dir, monkeypatch):
    """Another process creates the target while we write: without force, theirs wins, intact."""
    target = out_dir / "race.bin"
    real_fsync = os.fsync

    def other_writer(fd):
        target.write_bytes(b"theirs")
        real_fsync(fd)

    monkeypatch.setattr(sio.os, "fsync", other_writer)
    with pytest.raises(OutputError, match="already exists"):
        sio.atomic_write_bytes(target, b"ours")
    assert target.read_bytes() == b"theirs"
    assert leftovers(out_dir) == []


def test_interrupt_while_writing_removes_the_temp_file(out_dir, monkeypatch):
    target = out_dir / "x.bin"
    target.write_bytes(OLD)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(sio.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sio.atomic_write_bytes(target, b"new", force=True)
    assert target.read_bytes() == OLD
    assert leftovers(out_dir) == []


def test_no_hard_links_falls_back_to_checked_rename(out_dir, monkeypatch):
    """File systems without hard links (EPERM/EOPNOTSUPP from link) still get the file."""
    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(sio.os, "link", no_links)
    path = sio.atomic_write_bytes(out_dir / "y.bin", b"data")
    assert path.read_bytes() == b"data"
    with pytest.raises(OutputError, match="already exists"):
        sio.atomic_write_bytes(out_dir / "y.bin", b"other")
    assert path.read_bytes() == b"data"
    assert leftovers(out_dir) == []


def test_dangling_symlink_counts_as_existing(out_dir):
    link = out_dir / "dangling.onnx"
    os.symlink(out_dir / "nowhere", link)
    with pytest.raises(OutputError, match="already exists"):
        sio.atomic_write_bytes(link, b"data")
    assert os.path.islink(link) and not (out_dir / "nowhere").exists()


def test_empty_output_path():
    with pytest.raises(OutputError, match="no output path"):
        sio.atomic_write_bytes("", b"data")


def test_model_over_the_protobuf_limit_is_saved_with_external_data(tmp_path, monkeypatch):
    """Models over 2 GiB (VGG-size models grow ~3x when converted) go to OUT.onnx + OUT.onnx.data;
    the limit is lowered here so that a small model takes that path."""
    import onnxruntime as ort

    from sglrp_onnx import io as sglrp_io

    converted = sglrp_onnx.convert(classifier_for_external_data(), composite="epsilon")
    monkeypatch.setattr(sglrp_io, "EXTERNAL_DATA_ABOVE_BYTES", 2000)
    out = tmp_path / "big.onnx"
    sglrp_onnx.save(converted, out)
    data = tmp_path / "big.onnx.data"
    assert data.is_file() and data.stat().st_size > 1000
    assert out.stat().st_size < converted.ByteSize()
    reloaded = sglrp_io.load_model(out)  # through the safe loader: data file inside the folder
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    feeds = {"x": x, "target": np.array([-1, 1], np.int64)}
    expected = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"]).run(["relevance"], feeds)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["relevance"], feeds)[0]
    np.testing.assert_array_equal(got, expected)
    original = {t.name: numpy_helper.to_array(t) for t in converted.graph.initializer}
    for tensor in reloaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), original[tensor.name])
    with pytest.raises(sglrp_onnx.errors.OutputError):
        sglrp_onnx.save(converted, out)  # both files exist: --force needed
    sglrp_onnx.save(converted, out, force=True)


def classifier_for_external_data():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1, name="fc"),
    ]
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(4, 512)).astype(np.float32), "wf")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
