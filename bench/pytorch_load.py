"""Load a model saved by `easel train --save FILE` into PyTorch and report its test accuracy.

    python bench/pytorch_load.py model.safetensors [--expect 0.9785]

With --expect (the `test_accuracy` Easel printed), exits non-zero unless the two agree to
within one digit of the 2,000.
"""

import argparse
import json
import sys

from safetensors.torch import load_file

from easel_data import LeNet5, accuracy, load_mnist, to_input


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--expect", type=float, help="Easel's test_accuracy for the same file")
    args = ap.parse_args()

    _, _, test_x, test_y = load_mnist()
    model = LeNet5()
    model.load_state_dict(load_file(args.checkpoint), strict=True)
    model.eval()
    acc, loss = accuracy(model, to_input(test_x), test_y)
    out = {"pytorch_test_accuracy": acc, "pytorch_test_loss": loss, "digits": len(test_y)}
    if args.expect is not None:
        out["easel_test_accuracy"] = args.expect
        out["agree"] = abs(acc - args.expect) <= 1.0 / len(test_y) + 1e-9
    print(json.dumps(out))
    if args.expect is not None and not out["agree"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
