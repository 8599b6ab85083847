"""The PyTorch peer for `easel bench train` (and, with --train, for `easel train`).

    python bench/pytorch_peer.py [--easel target/release/easel] [--seconds 10]

Trains the identical lenet5-28 in PyTorch on the CPU with ONE thread, at batch 64 with plain
SGD, the data resident as a float tensor, and measures steady-state samples/s. Then it runs
`easel bench train --backend cpu --json` on the same machine and prints both figures and their
ratio as one JSON line (with --baseline EASEL, also that binary's figure, right after). PyTorch is not a dependency of Easel: install it in a virtual environment
(`pip install torch safetensors numpy`), never in CI.

With --train EPOCHS it instead trains for that many epochs and reports the test accuracy, for
comparing learning curves with `easel train`.
"""

import argparse
import json
import subprocess
import time

import numpy as np
import torch
import torch.nn.functional as F

from easel_data import ROOT, LeNet5, accuracy, load_mnist, to_input


def bench(seconds, batch, lr):
    train_x, train_y, _, _ = load_mnist()
    x = to_input(train_x)
    y = torch.from_numpy(train_y.astype(np.int64))
    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rng = np.random.default_rng(0)

    def step():
        idx = torch.from_numpy(rng.integers(0, len(y), batch))
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()

    for _ in range(50):
        step()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            step()
        steps += 20
    dt = time.perf_counter() - t0
    return steps * batch / dt


def train(epochs, batch, lr):
    train_x, train_y, test_x, test_y = load_mnist()
    x, y = to_input(train_x), torch.from_numpy(train_y.astype(np.int64))
    tx = to_input(test_x)
    torch.manual_seed(1)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for epoch in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        acc, loss = accuracy(model, tx, test_y)
        print(json.dumps({"epoch": epoch + 1, "test_accuracy": acc, "test_loss": loss}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--easel", default=str(ROOT / "target" / "release" / "easel"))
    ap.add_argument("--baseline", metavar="EASEL",
                    help="another easel binary (say, main's) to measure right after, in the same run")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--train", type=int, metavar="EPOCHS")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    if args.train:
        train(args.train, args.batch, args.lr)
        return

    torch_sps = bench(args.seconds, args.batch, args.lr)

    def easel_bench(binary):
        out = subprocess.run(
            [binary, "bench", "train", "--backend", "cpu", "--batch", str(args.batch),
             "--seconds", str(args.seconds), "--json"],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        return json.loads(out)

    easel = easel_bench(args.easel)
    result = {
        "batch": args.batch,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pytorch_cpu_samples_per_sec": round(torch_sps, 1),
        "easel_cpu_samples_per_sec": easel["samples_per_sec"],
        "easel_adapter": easel["adapter"],
        "easel_over_pytorch": round(easel["samples_per_sec"] / torch_sps, 3),
    }
    if args.baseline:
        base = easel_bench(args.baseline)
        result["baseline_cpu_samples_per_sec"] = base["samples_per_sec"]
        result["easel_over_baseline"] = round(easel["samples_per_sec"] / base["samples_per_sec"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
