"""The PyTorch CUDA peer for `easel bench train --backend gpu` on a real GPU (bench/gpu/run.sh).

    python bench/gpu/torch_cuda_peer.py [--batches 64,256] [--seconds 8]

Trains the identical lenet5-28 (bench/easel_data.py) in PyTorch eager mode on the CUDA
device, plain SGD, the whole training split resident on the GPU as a float tensor, the batch
indices drawn on the GPU, and no loss read inside the timed loop (Easel reads its losses
asynchronously every 16 steps, so neither side waits per step). It synchronizes the device
before starting and stopping the clock, and prints one JSON object per run of batches.
PyTorch is not a dependency of Easel: bench/gpu/run.sh installs it into a virtual environment.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from easel_data import LeNet5, load_mnist, to_input  # noqa: E402


def bench(x, y, batch, seconds, lr):
    dev = x.device
    torch.manual_seed(0)
    model = LeNet5().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    n = len(y)

    def step():
        idx = torch.randint(0, n, (batch,), device=dev, generator=gen)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()

    for _ in range(50):
        step()
    torch.cuda.synchronize()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            step()
        steps += 50
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"batch": batch, "steps": steps, "seconds": round(dt, 3),
            "samples_per_sec": round(steps * batch / dt, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch_cuda_peer: PyTorch sees no CUDA device (torch.cuda.is_available() is False)")
    train_x, train_y, _, _ = load_mnist()
    x = to_input(train_x).cuda()
    y = torch.from_numpy(train_y.astype(np.int64)).cuda()
    runs = [bench(x, y, int(b), args.seconds, args.lr) for b in args.batches.split(",")]
    print(json.dumps({
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "mode": "eager",
        "runs": runs,
    }))


if __name__ == "__main__":
    main()
