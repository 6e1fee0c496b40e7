"""PyTorch baseline for distillation: trains a student architecture (a wick architecture file,
PyTorch's default initialisation) on the training split, by knowledge distillation from a teacher
(`alpha` > 0) or on the labels alone (`alpha` 0), with the schedule `wick distill` runs for the
same flags: seeded shuffling, batches of `batch`, SGD with Nesterov momentum 0.9 and weight decay
1e-4, cosine learning rate from `lr` to 0 over every step, the loss
`alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha)·CE(s, y)`, and the checkpoint with the best
validation accuracy (ties: lower loss). Prints one JSON object per seed: test accuracy, params."""
import argparse, json, math, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
from torch import nn
from baseline_common import read_safetensors
from torch_baseline import Graph


def tensors(path):
    d = read_safetensors(path)
    return torch.from_numpy(np.array(d["x"], dtype=np.float32)), torch.from_numpy(np.array(d["y"]).astype(np.int64))


def evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        z = model(x)
        return (z.argmax(1) == y).float().mean().item(), nn.functional.cross_entropy(z, y).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True); ap.add_argument("--teacher-arch", required=True)
    ap.add_argument("--student-arch", required=True)
    ap.add_argument("--train", required=True); ap.add_argument("--val", required=True); ap.add_argument("--test", required=True)
    ap.add_argument("--epochs", type=int, default=40); ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05); ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.9); ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    teacher = Graph(json.load(open(a.teacher_arch)), read_safetensors(a.teacher)).eval()
    (x, y), (xv, yv), (xt, yt) = tensors(a.train), tensors(a.val), tensors(a.test)
    with torch.no_grad():
        t_logits = teacher(x)
    T = a.temperature
    for seed in a.seeds:
        torch.manual_seed(seed)
        student = Graph(json.load(open(a.student_arch)), {})
        opt = torch.optim.SGD(student.parameters(), lr=a.lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
        steps = math.ceil(len(x) / a.batch) * a.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        g = torch.Generator().manual_seed(seed)
        best = (-1.0, 0.0, None)
        for _ in range(a.epochs):
            student.train()
            for idx in torch.randperm(len(x), generator=g).split(a.batch):
                s = student(x[idx])
                ce = nn.functional.cross_entropy(s, y[idx])
                if a.alpha > 0:
                    kl = nn.functional.kl_div(nn.functional.log_softmax(s / T, 1), nn.functional.log_softmax(t_logits[idx] / T, 1), log_target=True, reduction="batchmean")
                    loss = a.alpha * T * T * kl + (1 - a.alpha) * ce
                else:
                    loss = ce
                opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
            acc, l = evaluate(student, xv, yv)
            if acc > best[0] or (acc == best[0] and l < best[1]):
                best = (acc, l, {k: v.clone() for k, v in student.state_dict().items()})
        student.load_state_dict(best[2])
        params = sum(p.numel() for p in student.parameters())
        print(json.dumps({"seed": seed, "alpha": a.alpha, "test_accuracy": evaluate(student, xt, yt)[0], "best_val_accuracy": best[0], "params": params, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
