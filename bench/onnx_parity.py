"""ONNX Runtime on wick's ONNX exports: runs FILE.onnx on a data set and compares it with wick's
own predictions of the same model (`wick eval --predictions`), row by row.

Usage: onnx_parity.py --onnx FILE.onnx --data DATA.safetensors --wick PREDICTIONS.safetensors --label NAME
Prints one markdown table row: the label, the opset, both accuracies, the share of rows with the
same class and the largest logit difference.
"""
import argparse, json, struct
import numpy as np
import onnx
import onnxruntime as ort

DTYPES = {"F32": np.float32, "I64": np.int64, "F64": np.float64, "I32": np.int32, "I8": np.int8, "U8": np.uint8}


def load_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s : 8 + n + e], dtype=DTYPES[v["dtype"]]).reshape(v["shape"])
    return out


p = argparse.ArgumentParser()
p.add_argument("--onnx", required=True)
p.add_argument("--data", required=True)
p.add_argument("--wick", required=True)
p.add_argument("--label", required=True)
a = p.parse_args()
model = onnx.load(a.onnx)
onnx.checker.check_model(model, full_check=True)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
session = ort.InferenceSession(a.onnx, opts, providers=["CPUExecutionProvider"])
data = load_safetensors(a.data)
x, y = data["x"].astype(np.float32), data["y"]
logits = session.run(None, {session.get_inputs()[0].name: x})[0]
w = load_safetensors(a.wick)
ort_pred = logits.argmax(1)
agreement = float((ort_pred == w["predictions"]).mean())
print(f"| {a.label} | {model.opset_import[0].version} | {(ort_pred == y).mean():.4f} | {(w['predictions'] == y).mean():.4f} "
      f"| {agreement * 100:.2f} % of {len(y)} | {np.abs(logits - w['logits']).max():.2e} |")
