"""ONNX Runtime baseline for `bench/run.sh`: builds an ONNX graph from a wick architecture file and
its safetensors weights (no PyTorch needed), then times FP32 and INT8 (static QDQ, uint8
activations, per-channel int8 weights, as ORT's quantize_static makes it) inference at batch 1
and batch 64: median of repeated runs after warm-up. Prints one JSON object."""
import argparse, json, sys, tempfile, time, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import onnx
from onnx import helper, TensorProto, numpy_helper
import onnxruntime as ort
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantFormat, QuantType

from baseline_common import read_safetensors, pair, median_ms

def build(arch, w):
    nodes, inits = [], []
    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.astype(np.float32)), name))
    inp = arch["input"].get("name", "input")
    for n in arch["nodes"]:
        name, op, ins = n["name"], n["op"], n["inputs"]
        if op in ("conv1d", "conv2d"):
            init(name + ".weight", w[name + ".weight"])
            args = [ins[0], name + ".weight"]
            if n.get("bias", True):
                init(name + ".bias", w[name + ".bias"]); args.append(name + ".bias")
            if op == "conv1d":
                p = n.get("padding", 0)
                attrs = dict(kernel_shape=[n["kernel_size"]], strides=[n.get("stride", 1)], pads=[p, p], dilations=[n.get("dilation", 1)])
            else:
                ph, pw = pair(n.get("padding", 0))
                attrs = dict(kernel_shape=pair(n["kernel_size"]), strides=pair(n.get("stride", 1)), pads=[ph, pw, ph, pw], dilations=pair(n.get("dilation", 1)))
            nodes.append(helper.make_node("Conv", args, [name], group=n.get("groups", 1), **attrs))
        elif op in ("batchnorm2d", "batchnorm1d"):
            for s in ("weight", "bias", "running_mean", "running_var"):
                init(name + "." + s, w[name + "." + s])
            nodes.append(helper.make_node("BatchNormalization", [ins[0]] + [name + "." + s for s in ("weight", "bias", "running_mean", "running_var")], [name], epsilon=n.get("eps", 1e-5)))
        elif op == "linear":
            init(name + ".weight", w[name + ".weight"])
            args = [ins[0], name + ".weight"]
            if n.get("bias", True):
                init(name + ".bias", w[name + ".bias"]); args.append(name + ".bias")
            nodes.append(helper.make_node("Gemm", args, [name], transB=1))
        elif op in ("relu", "sigmoid", "tanh"):
            nodes.append(helper.make_node({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[op], ins, [name]))
        elif op == "relu6":
            init(name + ".lo", np.array(0.0)); init(name + ".hi", np.array(6.0))
            nodes.append(helper.make_node("Clip", [ins[0], name + ".lo", name + ".hi"], [name]))
        elif op == "silu":
            nodes.append(helper.make_node("Sigmoid", ins, [name + ".sig"]))
            nodes.append(helper.make_node("Mul", [ins[0], name + ".sig"], [name]))
        elif op == "gelu":
            # The exact (erf) form as PyTorch's exporter writes it: x·½·(1 + erf(x/√2)).
            init(name + ".sqrt2", np.array(np.sqrt(2.0))); init(name + ".one", np.array(1.0)); init(name + ".half", np.array(0.5))
            nodes += [helper.make_node("Div", [ins[0], name + ".sqrt2"], [name + ".d"]), helper.make_node("Erf", [name + ".d"], [name + ".e"]),
                      helper.make_node("Add", [name + ".e", name + ".one"], [name + ".a"]), helper.make_node("Mul", [ins[0], name + ".a"], [name + ".m"]),
                      helper.make_node("Mul", [name + ".m", name + ".half"], [name])]
        elif op in ("maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d"):
            k = [n["kernel_size"]] if op.endswith("1d") else pair(n["kernel_size"])
            st = [n.get("stride", n["kernel_size"])] if op.endswith("1d") else pair(n.get("stride", n["kernel_size"]))
            p = [n.get("padding", 0)] if op.endswith("1d") else pair(n.get("padding", 0))
            attrs = dict(kernel_shape=k, strides=st, pads=p + p, ceil_mode=int(n.get("ceil_mode", False)))
            if op.startswith("avg"):
                attrs["count_include_pad"] = int(n.get("count_include_pad", True))
            nodes.append(helper.make_node("MaxPool" if op.startswith("max") else "AveragePool", ins, [name], **attrs))
        elif op == "add":
            nodes.append(helper.make_node("Add", ins[:2], [name]))
        elif op == "global_avg_pool":
            nodes.append(helper.make_node("GlobalAveragePool", ins, [name + ".pool"]))
            nodes.append(helper.make_node("Flatten", [name + ".pool"], [name], axis=1))
        elif op == "flatten":
            nodes.append(helper.make_node("Flatten", ins, [name], axis=n.get("start_dim", 1)))
        elif op == "dropout":
            nodes.append(helper.make_node("Identity", ins, [name]))
        else:
            sys.exit(f"ort_baseline.py: op '{op}' (node '{name}') is not supported by this baseline script")
    out = arch.get("output") or arch["nodes"][-1]["name"]
    x = helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N"] + arch["input"]["shape"])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "wick", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, inp

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model"); ap.add_argument("--arch"); ap.add_argument("--data"); ap.add_argument("--calib")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--onnx", help="time this ONNX file (e.g. a PyTorch export) instead of building one from --arch")
    a = ap.parse_args()
    test = read_safetensors(a.data); calib = read_safetensors(a.calib)
    tmp = tempfile.mkdtemp()
    if a.onnx:
        fp32 = a.onnx; inp = onnx.load(a.onnx).graph.input[0].name
    else:
        arch = json.load(open(a.arch)); w = read_safetensors(a.model)
        m, inp = build(arch, w)
        fp32 = os.path.join(tmp, "fp32.onnx"); onnx.save(m, fp32)
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{inp: calib["x"][i:i + 1].astype(np.float32)} for i in range(min(256, len(calib["x"])))])
        def get_next(self):
            return next(self.it, None)
    int8 = os.path.join(tmp, "int8.onnx")
    quantize_static(fp32, int8, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    so = ort.SessionOptions(); so.intra_op_num_threads = a.threads; so.inter_op_num_threads = 1
    res = {"threads": a.threads, "onnxruntime": ort.__version__}
    x = test["x"].astype(np.float32); y = test["y"]
    preds = {}
    for kind, path in (("fp32", fp32), ("int8", int8)):
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        one, many = x[:1], x[:64]
        res[kind] = {"batch1_ms": median_ms(lambda: s.run(None, {inp: one}), 200),
                     "large_batch": 64, "large_batch_ms": median_ms(lambda: s.run(None, {inp: many}), 50)}
        preds[kind] = s.run(None, {inp: x})[0].argmax(1)
        res[kind]["test_accuracy"] = float((preds[kind] == y).mean())
    res["int8_flipped_vs_fp32"] = int((preds["fp32"] != preds["int8"]).sum())
    print(json.dumps(res))

main()
