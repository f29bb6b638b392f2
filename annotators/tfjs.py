"""TensorFlow.js graph models as frozen TensorFlow graphs, which OpenVINO reads: no TensorFlow needed.

A TF.js graph model is a model.json (a TensorFlow GraphDef in protobuf's JSON form, plus a manifest of its
constants) and binary shards holding the constants, often stored as float16 or 8/16-bit with a scale. The
converter that made it fused each convolution with its bias and activation into ops only TF.js runs
(`_FusedConv2D`, `FusedDepthwiseConv2dNative`); they are split back into TensorFlow's own here.
"""

import json
from pathlib import Path

import numpy as np

DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
FUSED = {"_FusedConv2D": "Conv2D", "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative"}


class TfjsError(ValueError):
    """A model.json this converter cannot read; the message says what it met."""


def constants(model_dir, manifest):
    """The manifest's constants by name, as float32/int32/bool arrays, dequantized."""
    values = {}
    for group in manifest:
        data = b"".join((Path(model_dir) / path).read_bytes() for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"], dtype=np.int64))
            quantization = spec.get("quantization")
            stored = np.dtype(quantization["dtype"] if quantization else DTYPES[spec["dtype"]])
            array = np.frombuffer(data, stored, count, offset)
            offset += count * stored.itemsize
            if quantization and quantization["dtype"] != "float16":  # uint8/uint16: min + scale * q
                array = quantization["min"] + quantization["scale"] * array.astype(np.float32)
            values[spec["name"]] = array.astype(DTYPES[spec["dtype"]]).reshape(spec["shape"])
        if offset != len(data):
            raise TfjsError(f"the weight shards {group['paths']} hold {len(data)} bytes, the manifest {offset}")
    return values


def graph_def(model_json, outputs=None):
    """The model as a serialized frozen GraphDef (the bytes of a .pb file); with `outputs` (node names) only what
    they are computed from, so they become its outputs."""
    from google.protobuf import json_format
    from tensorboardX.proto import graph_pb2, types_pb2

    model_json = Path(model_json)
    spec = json.loads(model_json.read_text())
    if spec.get("format") != "graph-model":
        raise TfjsError(f"{model_json} is a TF.js {spec.get('format')!r}, not a graph model")
    values = constants(model_json.parent, spec["weightsManifest"])
    types = {np.float32: types_pb2.DT_FLOAT, np.int32: types_pb2.DT_INT32, np.bool_: types_pb2.DT_BOOL}
    graph = graph_pb2.GraphDef()
    for entry in spec["modelTopology"]["node"]:
        node = graph.node.add()
        json_format.ParseDict(entry, node, ignore_unknown_fields=True)
        if node.op in FUSED:
            unfuse(graph, node)
        elif node.op == "Const":
            if node.name not in values:
                raise TfjsError(f"{model_json}: the constant {node.name} is not in the weights manifest")
            array = values[node.name]
            tensor = node.attr["value"].tensor
            tensor.Clear()
            tensor.dtype = types[array.dtype.type]
            tensor.tensor_shape.SetInParent()  # a scalar's shape is present and empty, not unknown
            for size in array.shape:
                tensor.tensor_shape.dim.add().size = size
            tensor.tensor_content = np.ascontiguousarray(array).tobytes()
    if outputs:
        kept = needed(graph, outputs)
        nodes = [node for node in graph.node if node.name in kept]
        del graph.node[:]
        graph.node.extend(nodes)
    return graph.SerializeToString()


def needed(graph, outputs):
    """The names of the nodes `outputs` are computed from, themselves included."""
    inputs = {node.name: [name.lstrip("^").split(":")[0] for name in node.input] for node in graph.node}
    missing = [name for name in outputs if name not in inputs]
    if missing:
        raise TfjsError(f"no node named {', '.join(missing)} in the graph")
    kept, todo = set(), list(outputs)
    while todo:
        name = todo.pop()
        if name not in kept:
            kept.add(name)
            todo += inputs[name]
    return kept


def unfuse(graph, node):
    """A fused convolution -> the convolution, BiasAdd and its activation, the last keeping the node's name."""
    ops = [op.decode() for op in node.attr["fused_ops"].list.s]
    if ops[:1] != ["BiasAdd"] or len(ops) > 2 or (ops[1:] and ops[1] not in ("Relu", "Relu6", "Elu", "Sigmoid")):
        raise TfjsError(f"{node.name}: fused ops {ops} are not supported (BiasAdd, then Relu/Relu6/Elu/Sigmoid)")
    name, bias_input = node.name, node.input[2]
    node.op, node.name = FUSED[node.op], f"{name}/convolution"
    del node.input[2:]
    for key in ("fused_ops", "num_args", "epsilon", "leakyrelu_alpha"):
        node.attr.pop(key, None)
    bias = graph.node.add(name=name if len(ops) == 1 else f"{name}/bias", op="BiasAdd",
                          input=[node.name, bias_input])
    bias.attr["T"].CopyFrom(node.attr["T"])
    bias.attr["data_format"].CopyFrom(node.attr["data_format"])
    if len(ops) == 2:
        activation = graph.node.add(name=name, op=ops[1], input=[bias.name])
        activation.attr["T"].CopyFrom(node.attr["T"])


def to_openvino(model_json, xml_path, outputs=None):
    """Converts a TF.js graph model to OpenVINO's IR at `xml_path` (and its .bin), written whole or not at all;
    `outputs` (node names) become its outputs instead of the model's own."""
    import tempfile

    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml_path.parent) as scratch:
        frozen = Path(scratch) / "model.pb"
        frozen.write_bytes(graph_def(model_json, outputs))
        staged = Path(scratch) / xml_path.name
        ov.save_model(ov.convert_model(str(frozen)), str(staged), compress_to_fp16=False)  # 8-bit steps stay exact
        staged.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
        staged.replace(xml_path)  # the .xml last: present means complete
    return xml_path
