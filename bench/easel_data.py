"""Shared helpers for the PyTorch peers: Easel's data file and the same LeNet-5 in PyTorch."""

import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "mnist.bin"


def load_mnist(path=DATA):
    """(train_x, train_y, test_x, test_y): u8 images [N, 28, 28] and u8 labels, as Easel splits them.

    The format is documented in data/README.md; `cargo xtask data` writes the file.
    """
    b = Path(path).read_bytes()
    if b[:8] != b"EASELMN1":
        raise SystemExit(f"{path} is not an Easel MNIST file: run `cargo xtask data`")
    n_train, n_test = struct.unpack("<II", b[8:16])
    off = 16

    def take(n):
        nonlocal off
        a = np.frombuffer(b, np.uint8, n, off)
        off += n
        return a

    train_x = take(n_train * 784).reshape(n_train, 28, 28)
    train_y = take(n_train)
    test_x = take(n_test * 784).reshape(n_test, 28, 28)
    test_y = take(n_test)
    return train_x, train_y, test_x, test_y


def to_input(images_u8):
    """The rule Easel uses (client/src/model.rs, pixel_to_input): pixel / 255 as f32."""
    return torch.from_numpy(images_u8.astype(np.float32) / 255.0).unsqueeze(1)


class LeNet5(nn.Module):
    """lenet5-28 exactly as Easel's ModelSpec describes it; its state-dict names match Easel's checkpoints."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(256, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # [batch, 6, 12, 12]
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # [batch, 16, 4, 4]
        x = torch.flatten(x, 1)  # [batch, 256]
        x = F.relu(self.fc1(x))  # [batch, 120]
        x = F.relu(self.fc2(x))  # [batch, 84]
        return self.fc3(x)  # [batch, 10]


@torch.no_grad()
def accuracy(model, x, y):
    logits = model(x)
    loss = F.cross_entropy(logits, torch.from_numpy(y.astype(np.int64))).item()
    acc = (logits.argmax(1).numpy() == y).mean()
    return float(acc), float(loss)
