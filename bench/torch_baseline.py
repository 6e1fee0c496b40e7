"""PyTorch baseline for `bench/run.sh`: builds a torch.nn module from a wick architecture file
and its safetensors weights, then times what `wick bench` times for training: one epoch over the
training split at batch 64 (forward, cross-entropy, backward, SGD step with momentum 0.9, the
batches in file order — wick shuffles with a seed; the work per epoch is the same), median of
repeated epochs after a warm-up epoch, and FP32 inference
at batch 1 and 64. Prints one JSON object."""
import argparse, json, os, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
from torch import nn
from baseline_common import read_safetensors, pair, median_ms


def module(n):
    """The torch.nn module of a wick node with parameters (None for parameter-free ops)."""
    op = n["op"]
    if op in ("conv1d", "conv2d"):
        cls = nn.Conv1d if op == "conv1d" else nn.Conv2d
        return cls(n["in_channels"], n["out_channels"], n["kernel_size"], stride=n.get("stride", 1), padding=n.get("padding", 0),
                   dilation=n.get("dilation", 1), groups=n.get("groups", 1), bias=n.get("bias", True))
    if op in ("batchnorm1d", "batchnorm2d"):
        cls = nn.BatchNorm1d if op == "batchnorm1d" else nn.BatchNorm2d
        return cls(n["num_features"], eps=n.get("eps", 1e-5), momentum=n.get("momentum", 0.1), affine=n.get("affine", True))
    if op == "layernorm":
        return nn.LayerNorm(n["normalized_shape"], eps=n.get("eps", 1e-5), elementwise_affine=n.get("elementwise_affine", True))
    if op == "linear":
        return nn.Linear(n["in_features"], n["out_features"], bias=n.get("bias", True))
    if op == "position_embedding":
        return PositionTable(n["num_positions"], n["embedding_dim"], n.get("offset", 0))
    return None


class PositionTable(nn.Module):
    """`x + weight[offset + t]` at each position `t` of `x [N, L, D]`."""

    def __init__(self, rows, dim, offset):
        super().__init__()
        self.weight, self.offset = nn.Parameter(torch.zeros(rows, dim)), offset

    def forward(self, x):
        return x + self.weight[self.offset:self.offset + x.shape[1]]


def attention(n, ins):
    """Multi-head attention without a mask: `q, k, v [N, L, D]` split into heads,
    `F.scaled_dot_product_attention`, the heads joined."""
    if len(ins) != 3:
        raise SystemExit("torch_baseline: attention with a mask or a bias is not supported")
    N, L, D = ins[0].shape
    split = lambda t: t.reshape(N, L, n["num_heads"], D // n["num_heads"]).transpose(1, 2)
    return nn.functional.scaled_dot_product_attention(*map(split, ins)).transpose(1, 2).reshape(N, L, D)


def pool(n, ins):
    """A pooling node, PyTorch semantics (stride defaults to the kernel)."""
    op, k = n["op"], n["kernel_size"]
    s, p, ceil = n.get("stride", k), n.get("padding", 0), n.get("ceil_mode", False)
    F = nn.functional
    if op == "maxpool1d":
        return F.max_pool1d(ins[0], k, s, p, ceil_mode=ceil)
    if op == "maxpool2d":
        return F.max_pool2d(ins[0], k, s, p, ceil_mode=ceil)
    if op == "avgpool1d":
        return F.avg_pool1d(ins[0], k, s, p, ceil_mode=ceil, count_include_pad=n.get("count_include_pad", True))
    return F.avg_pool2d(ins[0], k, s, p, ceil_mode=ceil, count_include_pad=n.get("count_include_pad", True))


class Graph(nn.Module):
    """The wick graph, node by node: every op of the architecture format."""

    def __init__(self, arch, w):
        super().__init__()
        self.arch = arch
        self.mods = nn.ModuleDict()
        for n in arch["nodes"]:
            m = module(n)
            if m is None:
                continue
            for k, p in m.state_dict().items():
                src = w.get(n["name"] + "." + k)
                if src is not None:
                    p.copy_(torch.from_numpy(np.array(src)).reshape(p.shape))
            self.mods[n["name"].replace(".", "_")] = m

    def forward(self, x):
        F = nn.functional
        vals = {self.arch["input"].get("name", "input"): x}
        for n in self.arch["nodes"]:
            op, ins = n["op"], [vals[i] for i in n["inputs"]]
            key = n["name"].replace(".", "_")
            if key in self.mods:
                y = self.mods[key](ins[0])
            elif op in ("relu", "relu6", "silu", "sigmoid", "tanh"):
                y = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[op](ins[0])
            elif op == "gelu":
                y = F.gelu(ins[0], approximate=n.get("approximate", "none"))
            elif op == "add":
                y = ins[0]
                for t in ins[1:]:
                    y = y + t
            elif op == "concat":
                y = torch.cat(ins, n["dim"])
            elif op == "softmax":
                y = torch.softmax(ins[0], n["dim"])
            elif op.startswith(("maxpool", "avgpool")):
                y = pool(n, ins)
            elif op == "global_avg_pool":
                y = ins[0].flatten(2).mean(2)
            elif op == "flatten":
                y = torch.flatten(ins[0], n.get("start_dim", 1), n.get("end_dim", -1))
            elif op == "dropout":
                y = F.dropout(ins[0], n.get("p", 0.0), self.training)
            elif op == "narrow":
                y = ins[0].narrow(n["dim"], n["start"], n["length"])
            elif op == "mean":
                y = ins[0].mean(n["dim"], keepdim=n.get("keepdim", False))
            elif op == "attention":
                y = attention(n, ins)
            else:
                raise SystemExit(f"torch_baseline: op {op} not supported")
            vals[n["name"]] = y
        return vals[self.arch.get("output") or self.arch["nodes"][-1]["name"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True); ap.add_argument("--arch", required=True)
    ap.add_argument("--train", required=True); ap.add_argument("--test", required=True)
    ap.add_argument("--threads", type=int, default=1); ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    arch = json.load(open(a.arch))
    w = read_safetensors(a.model)
    model = Graph(arch, w)
    tr, te = read_safetensors(a.train), read_safetensors(a.test)
    x, y = torch.from_numpy(np.array(tr["x"], dtype=np.float32)), torch.from_numpy(np.array(tr["y"]).astype(np.int64))
    xt = torch.from_numpy(np.array(te["x"], dtype=np.float32))

    model.eval()
    with torch.no_grad():
        b1 = median_ms(lambda: model(xt[:1]), 25)
        b64 = median_ms(lambda: model(xt[:64]), 15)

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lossf = nn.CrossEntropyLoss()

    def epoch():
        for s in range(0, len(x), 64):
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(x[s:s + 64]), y[s:s + 64])
            loss.backward()
            opt.step()

    times = []
    if a.epochs > 0:
        epoch()
        for _ in range(a.epochs):
            s = time.perf_counter(); epoch(); times.append(time.perf_counter() - s)
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "train_epoch_s": statistics.median(times) if times else None,
                      "fp32": {"batch1_ms": b1, "large_batch_ms": b64}}))


if __name__ == "__main__":
    main()
