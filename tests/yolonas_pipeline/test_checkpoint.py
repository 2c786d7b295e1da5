"""Checkpoint inspection on real super-gradients checkpoints, hostile pickles and a real (moto) S3 server.

The checkpoints are written by super-gradients itself in the trainer environment (tests/fixtures/
make_checkpoints.py, once per session, ~40 s on 2 idle cores); this suite runs in the Airflow environment, which
has no torch. Set YOLONAS_TEST_CHECKPOINTS to a directory to keep them between sessions. S3 is the shared moto
server fixture (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from yolonas_pipeline.checkpoint import CheckpointInfo, ClassPlan, inspect_checkpoint, plan_classes
from yolonas_pipeline.errors import CheckpointError, StageInputError
from yolonas_pipeline.storage import Storage

REPO = Path(__file__).resolve().parents[2]
REAL = ["s_trained_best", "s_trained_average", "m", "l", "pose_s", "legacy_s", "s_state_dict"]


# -- fixtures ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Checkpoints:
    root: Path
    manifest: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.root / self.manifest[name]["file"]


@pytest.fixture(scope="session")
def sg_checkpoints(tmp_path_factory: pytest.TempPathFactory, trainer_python: Path) -> Iterator[Checkpoints]:
    """Real checkpoints written by super-gradients in the trainer environment (generated once per session)."""
    cache = os.environ.get("YOLONAS_TEST_CHECKPOINTS")
    root = Path(cache) if cache else tmp_path_factory.mktemp("sg_checkpoints")
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    result = subprocess.run(
        [str(trainer_python), str(REPO / "tests" / "fixtures" / "make_checkpoints.py"), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(
            f"make_checkpoints.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    yield Checkpoints(root, json.loads((root / "manifest.json").read_text()))
    if not cache:  # ~1.6 GB; pytest would keep it around for its last three sessions
        shutil.rmtree(root, ignore_errors=True)


def _data_pkl_size(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return next(i.compress_size for i in archive.infolist() if i.filename.endswith("/data.pkl"))


def _torch_zip(
    path: Path,
    data_pkl: bytes,
    *,
    archive: str = "archive",
    extra: dict[str, bytes] | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """A zip in torch.save's layout around a hand-made data.pkl."""
    with zipfile.ZipFile(path, "w") as out:
        out.writestr(f"{archive}/data.pkl", data_pkl, compress_type=compression)
        out.writestr(f"{archive}/byteorder", b"little")
        for name, data in (extra or {}).items():
            out.writestr(f"{archive}/{name}", data)
        out.writestr(f"{archive}/version", b"3\n")
    return path


# -- real checkpoints ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REAL)
def test_inspects_real_super_gradients_checkpoints(sg_checkpoints: Checkpoints, name: str) -> None:
    truth = sg_checkpoints.manifest[name]
    path = sg_checkpoints.path(name)
    info = inspect_checkpoint(str(path), storage=Storage())

    assert info.uri == str(path)
    assert info.size_bytes == path.stat().st_size
    assert info.architecture == truth["architecture"]
    assert info.num_classes == truth["num_classes"]
    assert info.num_keypoints == truth["num_keypoints"]
    assert info.state_dict_key == truth["state_dict_key"]
    assert info.class_names == truth["class_names"]
    assert info.epoch == truth["epoch"]
    expected_metrics = truth["metrics"]["valid"] if truth["metrics"] else None
    assert info.metrics == expected_metrics
    assert info.sha256 is None
    # The head shapes torch saw are the ones the class count came from.
    head1 = truth["head_shapes"]["heads.head1.cls_pred.weight"]
    keypoints = truth["num_keypoints"] or 0
    assert head1[0] == info.num_classes + keypoints
    # Only the pickle and the zip directory were read: well under 1 % of the file.
    assert info.bytes_read < 0.01 * info.size_bytes
    if name != "legacy_s":
        assert info.bytes_read >= _data_pkl_size(path)
    json.dumps(info.to_dict())  # the operator pushes it to XCom


def test_real_checkpoints_cover_the_issue_matrix(sg_checkpoints: Checkpoints) -> None:
    manifest = sg_checkpoints.manifest
    counts = {manifest[n]["architecture"]: manifest[n]["num_classes"] for n in ("s_trained_best", "m", "l")}
    assert counts == {"yolo_nas_s": 3, "yolo_nas_m": 5, "yolo_nas_l": 11}
    assert "ema_net" in manifest["s_trained_best"]["keys"]
    assert "optimizer_state_dict" in manifest["s_trained_best"]["keys"]
    assert "ema_net" not in manifest["s_trained_average"]["keys"]  # average_model.pth
    # Class ids {3: dog, 7: cat, 11: bird} sorted by id, stored as np.str_ by super-gradients.
    assert manifest["s_trained_best"]["class_names"] == ["dog", "cat", "bird"]
    with zipfile.ZipFile(sg_checkpoints.path("s_trained_best")) as archive:
        assert b"numpy._core.multiarray\nscalar" in archive.read("ckpt_best/data.pkl")


def test_ema_net_is_preferred_and_distinct_from_net(sg_checkpoints: Checkpoints) -> None:
    best = inspect_checkpoint(str(sg_checkpoints.path("s_trained_best")), storage=Storage())
    average = inspect_checkpoint(str(sg_checkpoints.path("s_trained_average")), storage=Storage())
    assert (best.state_dict_key, average.state_dict_key) == ("ema_net", "net")


def test_sha256_verified_by_streaming_the_whole_file(sg_checkpoints: Checkpoints) -> None:
    path = sg_checkpoints.path("s_trained_average")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = inspect_checkpoint(str(path), storage=Storage(), expected_sha256=digest.upper())
    assert info.sha256 == digest
    assert info.bytes_read >= info.size_bytes  # the whole file, counted honestly

    wrong = "0" * 64
    with pytest.raises(CheckpointError) as err:
        inspect_checkpoint(str(path), storage=Storage(), expected_sha256=f"sha256:{wrong}")
    assert digest in str(err.value) and wrong in str(err.value)

    with pytest.raises(StageInputError, match="not a SHA-256"):
        inspect_checkpoint(str(path), storage=Storage(), expected_sha256="abc")


def test_deflated_data_pkl_is_read(sg_checkpoints: Checkpoints, tmp_path: Path) -> None:
    """A checkpoint re-zipped with data.pkl deflated (torch stores it; other tools may not)."""
    source = sg_checkpoints.path("s_trained_average")
    target = tmp_path / "deflated.pth"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            method = zipfile.ZIP_DEFLATED if item.filename.endswith("data.pkl") else zipfile.ZIP_STORED
            dst.writestr(item.filename, src.read(item), compress_type=method)
    with zipfile.ZipFile(target) as check:
        assert check.getinfo("average_model/data.pkl").compress_type == zipfile.ZIP_DEFLATED
    info = inspect_checkpoint(str(target), storage=Storage())
    target.unlink()  # 76 MB; pytest keeps tmp_path for three sessions
    assert (info.architecture, info.num_classes, info.class_names) == ("yolo_nas_s", 3, ["dog", "cat", "bird"])


def _zip64(members: dict[str, bytes]) -> bytes:
    """A zip64 archive (zip64 extra fields and end records), as torch writes for files over 4 GiB."""
    out, central = bytearray(), bytearray()
    for name, data in members.items():
        offset, raw, crc = len(out), name.encode(), zlib.crc32(data)
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += (
            struct.pack(
                "<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(local_extra)
            )
            + raw
            + local_extra
            + data
        )
        extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        central += (
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02",
                45,
                45,
                0,
                0,
                0,
                0,
                crc,
                0xFFFFFFFF,
                0xFFFFFFFF,
                len(raw),
                len(extra),
                0,
                0,
                0,
                0,
                0xFFFFFFFF,
            )
            + raw
            + extra
        )
    cd_offset = len(out)
    out += central
    eocd64 = len(out)
    out += struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, len(members), len(members), len(central), cd_offset
    )
    out += struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64, 1)
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(out)


def test_zip64_layout(sg_checkpoints: Checkpoints, tmp_path: Path) -> None:
    with zipfile.ZipFile(sg_checkpoints.path("m")) as archive:
        data_pkl = archive.read("m/data.pkl")
    blob = _zip64({"big/data.pkl": data_pkl, "big/byteorder": b"little", "big/version": b"3\n"})
    assert zipfile.ZipFile(io.BytesIO(blob)).read("big/data.pkl") == data_pkl  # a valid zip64 archive
    path = tmp_path / "big.pth"
    path.write_bytes(blob)
    info = inspect_checkpoint(str(path), storage=Storage())
    assert (info.architecture, info.num_classes, info.state_dict_key) == ("yolo_nas_m", 5, "ema_net")


def test_zip_with_long_archive_comment(sg_checkpoints: Checkpoints, tmp_path: Path) -> None:
    with zipfile.ZipFile(sg_checkpoints.path("pose_s")) as archive:
        data_pkl = archive.read("pose_s/data.pkl")
    path = _torch_zip(tmp_path / "commented.pth", data_pkl)
    with zipfile.ZipFile(path, "a") as archive:
        archive.comment = b"c" * 60000  # the end record is now beyond the first tail read
    info = inspect_checkpoint(str(path), storage=Storage())
    assert (info.architecture, info.num_keypoints, info.num_classes) == ("yolo_nas_pose_s", 17, 1)


# -- hostile and broken files ---------------------------------------------------------------------------------
class _Payload:
    """Pickles as a call to ``func(*args)``: what torch.load(weights_only=False) would execute."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _hostile(kind: str, marker: Path) -> tuple[bytes, str]:
    """A checkpoint-shaped pickle whose loading would create ``marker``, and the global it must be refused for."""
    import builtins

    payloads = {
        "os.system": (_Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        "builtins.exec": (_Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
        "subprocess": (_Payload(subprocess.check_call, ["touch", str(marker)]), "subprocess.check_call"),
    }
    payload, global_name = payloads[kind]
    ckpt = {"net": {"heads.head1.cls_pred.weight": payload}, "epoch": 1, "processing_params": {"class_names": ["a"]}}
    return pickle.dumps(ckpt, protocol=2), global_name


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess"])
def test_hostile_pickle_is_refused_and_never_executed(tmp_path: Path, kind: str) -> None:
    # The payload is real: plain pickle.loads in a child process runs it.
    proof = tmp_path / "proof_marker"
    proof_pkl, _ = _hostile(kind, proof)
    (tmp_path / "proof.pkl").write_bytes(proof_pkl)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())",
            str(tmp_path / "proof.pkl"),
        ],
        check=True,
        timeout=60,
    )
    assert proof.exists()

    marker = tmp_path / "marker"
    data_pkl, global_name = _hostile(kind, marker)
    path = _torch_zip(tmp_path / "hostile.pth", data_pkl)
    with pytest.raises(CheckpointError) as err:
        inspect_checkpoint(str(path), storage=Storage())
    assert global_name in str(err.value)
    assert getattr(err.value, "global_name", None) == global_name
    assert not marker.exists()

    # The same payload as a bare pickle (the legacy, non-zip path) is refused too.
    bare = tmp_path / "hostile_legacy.pth"
    bare.write_bytes(data_pkl)
    with pytest.raises(CheckpointError, match=re.escape(global_name)):
        inspect_checkpoint(str(bare), storage=Storage())
    assert not marker.exists()


def test_hostile_codecs_encode_is_limited_to_latin1(tmp_path: Path) -> None:
    import codecs

    data_pkl = pickle.dumps({"net": {"x": _Payload(codecs.encode, "payload", "rot13")}}, protocol=2)
    with pytest.raises(CheckpointError, match=r"_codecs\.encode"):
        inspect_checkpoint(str(_torch_zip(tmp_path / "c.pth", data_pkl)), storage=Storage())


def _build_on_global(module: str, name: str, attribute: str, slot_state: bool) -> bytes:
    """A pickle that names an allowed global, then BUILDs (sets attributes) on that very object."""

    def text(value: str) -> bytes:
        return b"X" + struct.pack("<I", len(value)) + value.encode()

    state = b"}" + text(attribute) + text("evil") + b"s"
    if slot_state:
        state = b"N" + state + b"\x86"  # (None, {attribute: "evil"}): setattr instead of __dict__ update
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + state + b"b."


@pytest.mark.parametrize(
    ("module", "name", "attribute"),
    [
        ("torch", "FloatStorage", "dtype"),
        ("torch._utils", "_rebuild_tensor_v2", "shape"),
        ("numpy", "dtype", "kind"),
        ("_codecs", "encode", "function"),
        ("torch", "float32", "name"),
    ],
)
@pytest.mark.parametrize("slot_state", [False, True])
def test_pickle_cannot_rewrite_allowed_globals(
    tmp_path: Path, module: str, name: str, attribute: str, slot_state: bool
) -> None:
    from yolonas_pipeline.safe_unpickle import ALLOWED_GLOBALS

    target = ALLOWED_GLOBALS[(module, name)]
    before = getattr(target, attribute)
    path = _torch_zip(tmp_path / "tamper.pth", _build_on_global(module, name, attribute, slot_state))
    with pytest.raises(CheckpointError):
        inspect_checkpoint(str(path), storage=Storage())
    assert getattr(target, attribute) is before


def test_whole_pickled_module_is_refused_with_a_hint(sg_checkpoints: Checkpoints) -> None:
    with pytest.raises(CheckpointError, match=r"torch\.nn\.modules\.container\.Sequential.*state_dict"):
        inspect_checkpoint(str(sg_checkpoints.path("whole_module")), storage=Storage())


def test_not_a_yolo_nas_state_dict(sg_checkpoints: Checkpoints) -> None:
    with pytest.raises(CheckpointError, match=r"not a YOLO-NAS checkpoint.*heads\.head1\.cls_pred\.weight"):
        inspect_checkpoint(str(sg_checkpoints.path("not_yolo")), storage=Storage())


def test_missing_file_names_the_uri(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        inspect_checkpoint(str(missing), storage=Storage())
    with pytest.raises(CheckpointError, match="is a directory"):
        inspect_checkpoint(str(tmp_path), storage=Storage())


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (b"", "not a torch checkpoint"),
        (b'{"model": "yolo_nas_s", "classes": 3}\n' * 10, "found text"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 600, "PNG image"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 600, "gzip"),
        (b"just some bytes that are nothing in particular" * 20, "neither a zip archive nor a pickle"),
    ],
)
def test_not_a_checkpoint_says_what_was_found(tmp_path: Path, content: bytes, found: str) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=found):
        inspect_checkpoint(str(path), storage=Storage())


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "dataset.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images/0001.jpg", b"\xff\xd8\xff" + b"0" * 100)
        archive.writestr("annotations.json", b"{}")
    with pytest.raises(CheckpointError, match=r"without images/data\.pkl.*first entries: images/0001\.jpg"):
        inspect_checkpoint(str(path), storage=Storage())


def test_torchscript_archive_is_named(tmp_path: Path) -> None:
    # What a torch.jit.save archive's data.pkl starts with: an object of a scripted class.
    scripted = b"\x80\x02c__torch__.yolo\nYoloNAS\nq\x00)\x81q\x01."
    path = _torch_zip(tmp_path / "scripted.pt", scripted, extra={"constants.pkl": pickle.dumps(())})
    with pytest.raises(CheckpointError, match=r"__torch__\.yolo\.YoloNAS.*TorchScript"):
        inspect_checkpoint(str(path), storage=Storage())


def test_pickle_without_torch_magic_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"net": {}}, protocol=2))
    with pytest.raises(CheckpointError, match="no torch magic number"):
        inspect_checkpoint(str(path), storage=Storage())


def test_corrupt_data_pkl_fails_crc(sg_checkpoints: Checkpoints, tmp_path: Path) -> None:
    source = sg_checkpoints.path("s_trained_average")
    with zipfile.ZipFile(source) as archive:
        offset = archive.getinfo("average_model/data.pkl").header_offset + 200  # inside data.pkl
    path = tmp_path / "corrupt.pth"
    shutil.copyfile(source, path)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    try:
        with pytest.raises(CheckpointError, match="CRC-32"):
            inspect_checkpoint(str(path), storage=Storage())
    finally:
        path.unlink()  # 76 MB; pytest keeps tmp_path for three sessions


# -- S3 ------------------------------------------------------------------------------------------------------
def test_s3_ranged_reads(sg_checkpoints: Checkpoints, moto_s3: Any) -> None:
    path = sg_checkpoints.path("s_trained_best")  # 256 MB, produced by the real Trainer
    bucket = moto_s3.new_bucket()
    moto_s3.client.upload_file(str(path), bucket, "runs/ckpt_best.pth")
    uri = f"s3://{bucket}/runs/ckpt_best.pth"
    storage = Storage(moto_s3.client)
    info = inspect_checkpoint(uri, storage=storage)
    local = inspect_checkpoint(str(path), storage=Storage())
    assert info.model_copy(update={"uri": local.uri}) == local
    assert info.bytes_read == storage.stats.bytes_read  # what went over the network
    assert storage.stats.requests == 2  # the tail (end records + central directory), then data.pkl
    assert info.bytes_read < 0.01 * info.size_bytes
    assert info.bytes_read < 2 * _data_pkl_size(path)


def test_s3_missing_key_and_hostile_object(moto_s3: Any, tmp_path: Path) -> None:
    storage = Storage(moto_s3.client)
    bucket = moto_s3.new_bucket()
    with pytest.raises(FileNotFoundError, match=re.escape(f"s3://{bucket}/none.pth")):
        inspect_checkpoint(f"s3://{bucket}/none.pth", storage=storage)
    marker = tmp_path / "marker"
    data_pkl, global_name = _hostile("os.system", marker)
    path = _torch_zip(tmp_path / "hostile.pth", data_pkl)
    moto_s3.client.upload_file(str(path), bucket, "hostile.pth")
    with pytest.raises(CheckpointError, match=re.escape(global_name)):
        inspect_checkpoint(f"s3://{bucket}/hostile.pth", storage=storage)
    assert not marker.exists()


# -- class planning --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s_info(sg_checkpoints: Checkpoints) -> CheckpointInfo:
    return inspect_checkpoint(str(sg_checkpoints.path("s_trained_best")), storage=Storage())


def test_plan_counts_match(s_info: CheckpointInfo) -> None:
    plan = plan_classes(s_info, dataset_class_names=["dog", "cat", "bird"], model_name="YOLO_NAS_S")
    assert plan == ClassPlan(
        model_name="yolo_nas_s",
        num_classes=3,
        class_names=["dog", "cat", "bird"],
        checkpoint_uri=s_info.uri,
        checkpoint_num_classes=3,
        checkpoint=s_info,
    )
    json.dumps(plan.to_dict())


def test_plan_counts_differ(s_info: CheckpointInfo) -> None:
    names = ["helmet", "vest", "gloves", "mask", "goggles"]
    plan = plan_classes(s_info, dataset_class_names=names, model_name="yolo_nas_s")
    assert (plan.num_classes, plan.checkpoint_num_classes, plan.class_names) == (5, 3, names)
    assert plan.warnings == []


def test_plan_architecture_mismatch(s_info: CheckpointInfo, sg_checkpoints: Checkpoints) -> None:
    with pytest.raises(CheckpointError, match=r"holds a yolo_nas_s model but the run requests yolo_nas_l"):
        plan_classes(s_info, dataset_class_names=["a", "b", "c"], model_name="yolo_nas_l")
    pose = inspect_checkpoint(str(sg_checkpoints.path("pose_s")), storage=Storage())
    with pytest.raises(CheckpointError, match=r"yolo_nas_pose_s.*yolo_nas_s"):
        plan_classes(pose, dataset_class_names=["person"], model_name="yolo_nas_s")


def test_plan_names_differ_warns(s_info: CheckpointInfo) -> None:
    plan = plan_classes(s_info, dataset_class_names=["car", "cat", "bird"], model_name="yolo_nas_s")
    assert plan.num_classes == 3 and len(plan.warnings) == 1
    assert "'dog' -> 'car'" in plan.warnings[0]
    reordered = plan_classes(s_info, dataset_class_names=["cat", "dog", "bird"], model_name="yolo_nas_s")
    assert "different order" in reordered.warnings[0]
    unnamed = s_info.model_copy(update={"class_names": None})
    assert plan_classes(unnamed, dataset_class_names=["x", "y", "z"], model_name="yolo_nas_s").warnings == []


def test_plan_from_scratch_and_bad_input(s_info: CheckpointInfo) -> None:
    plan = plan_classes(None, dataset_class_names=("a", "b"), model_name="yolo_nas_m")
    assert plan == ClassPlan(model_name="yolo_nas_m", num_classes=2, class_names=["a", "b"])
    with pytest.raises(StageInputError, match=r"yolo_nas_xl.*yolo_nas_s"):
        plan_classes(None, dataset_class_names=["a"], model_name="yolo_nas_xl")
    with pytest.raises(StageInputError, match="dataset_class_names is empty"):
        plan_classes(s_info, dataset_class_names=[], model_name="yolo_nas_s")


# -- the module stays light ------------------------------------------------------------------------------------
def test_module_imports_neither_torch_nor_airflow_nor_numpy(sg_checkpoints: Checkpoints) -> None:
    code = (
        "import sys\n"
        "from yolonas_pipeline.checkpoint import inspect_checkpoint\n"
        "from yolonas_pipeline.storage import Storage\n"
        f"info = inspect_checkpoint({str(sg_checkpoints.path('s_trained_best'))!r}, storage=Storage())\n"
        "assert info.class_names == ['dog', 'cat', 'bird'], info\n"
        "loaded = [m for m in ('torch', 'airflow', 'numpy', 'super_gradients') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
