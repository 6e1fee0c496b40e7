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


class Graph(nn.Module):
    """The wick graph, node by node (the ops the fixtures use)."""

    def __init__(self, arch, w):
        super().__init__()
        self.arch = arch
        self.mods = nn.ModuleDict()
        for n in arch["nodes"]:
            op, name = n["op"], n["name"].replace(".", "_")
            if op == "conv2d":
                m = nn.Conv2d(n["in_channels"], n["out_channels"], n["kernel_size"], stride=n.get("stride", 1),
                              padding=n.get("padding", 0), dilation=n.get("dilation", 1), groups=n.get("groups", 1),
                              bias=n.get("bias", True))
            elif op == "batchnorm2d":
                m = nn.BatchNorm2d(n["num_features"], eps=n.get("eps", 1e-5), momentum=n.get("momentum", 0.1))
            elif op == "linear":
                m = nn.Linear(n["in_features"], n["out_features"], bias=n.get("bias", True))
            else:
                continue
            for k, p in m.state_dict().items():
                src = w.get(n["name"] + "." + k)
                if src is not None:
                    p.copy_(torch.from_numpy(np.array(src)).reshape(p.shape))
            self.mods[name] = m

    def forward(self, x):
        vals = {self.arch["input"].get("name", "input"): x}
        for n in self.arch["nodes"]:
            op, ins = n["op"], [vals[i] for i in n["inputs"]]
            key = n["name"].replace(".", "_")
            if key in self.mods:
                y = self.mods[key](ins[0])
            elif op == "relu":
                y = torch.relu(ins[0])
            elif op == "add":
                y = ins[0]
                for t in ins[1:]:
                    y = y + t
            elif op == "global_avg_pool":
                y = ins[0].mean(dim=(2, 3))
            elif op == "flatten":
                y = torch.flatten(ins[0], n.get("start_dim", 1), n.get("end_dim", -1))
            elif op == "dropout":
                y = nn.functional.dropout(ins[0], n.get("p", 0.5), self.training)
            else:
                raise SystemExit(f"torch_baseline: op {op} not supported")
            vals[n["name"]] = y
        return vals[self.arch["output"]]


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
