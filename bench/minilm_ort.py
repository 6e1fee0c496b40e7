"""ONNX Runtime's side of the MiniLM comparison: exports the encoder with mean pooling and L2
normalisation to ONNX (PyTorch's legacy exporter, dynamic batch and length), quantises it with
ORT's dynamic INT8 (per-channel weights), and times both on the sentences at batch 1 and 32 (each
batch padded to its longest, as wick does), with the INT8 model's fidelity to the FP32 one.
Prints one JSON object. Uses bench/.venv (torch, transformers, onnxruntime).
Usage: minilm_ort.py MODEL_DIR SENTENCES THREADS
"""
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer
from transformers import BertModel

model_dir, sentences, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])


class Encoder(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, ids, mask):
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(e, p=2, dim=1)


tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tok.no_padding()
tok.enable_truncation(256)
lines = [l.strip() for l in open(sentences) if l.strip()]
ids = [e.ids for e in tok.encode_batch(lines)]
enc = Encoder(BertModel.from_pretrained(model_dir).eval())
tmp = tempfile.mkdtemp()
fp32, int8 = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m.int8.onnx")
x = torch.ones(2, 8, dtype=torch.long)
torch.onnx.export(enc, (x, x), fp32, input_names=["ids", "mask"], output_names=["emb"], opset_version=17, dynamo=False,
                  dynamic_axes={"ids": {0: "n", 1: "l"}, "mask": {0: "n", 1: "l"}, "emb": {0: "n"}})
quantize_dynamic(fp32, int8, per_channel=True, weight_type=QuantType.QInt8)


def batches(bs):
    for i in range(0, len(ids), bs):
        b = ids[i:i + bs]
        n = max(len(s) for s in b)
        a = np.array([s + [0] * (n - len(s)) for s in b], dtype=np.int64)
        yield a, (a != 0).astype(np.int64)


def run(path, bs, rounds=3):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    out = np.concatenate([s.run(None, {"ids": a, "mask": m})[0] for a, m in batches(bs)])
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for a, m in batches(bs):
            s.run(None, {"ids": a, "mask": m})
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def fidelity(a, b):
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    nn = lambda e: [int(np.argmax(np.where(np.arange(len(e)) == i, -np.inf, e @ e[i]))) for i in range(len(e))]
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "nn_agreement": float(np.mean(np.array(nn(a)) == np.array(nn(b))))}


res = {"onnxruntime": ort.__version__, "threads": threads, "sentences": len(lines)}
for name, path in (("fp32", fp32), ("int8_dynamic_per_channel", int8)):
    (e1, t1), (e32, t32) = run(path, 1), run(path, 32)
    res[name] = {"batch1_ms_per_sentence": 1000 * t1 / len(lines), "batch32_ms_per_batch": 1000 * t32 / -(-len(lines) // 32), "emb": e32}
ref = res["fp32"].pop("emb")
res["int8_dynamic_per_channel"]["fidelity_to_fp32"] = fidelity(res["int8_dynamic_per_channel"].pop("emb"), ref)
print(json.dumps(res))
