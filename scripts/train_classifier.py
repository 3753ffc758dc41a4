#!/usr/bin/env python3
"""Train the shipped demo classifier: msrs.zoo.digits_classifier on the CLEAN digits train split.

The classifier never sees noise: denoised smoothing puts a one-shot diffusion denoiser in front of an
off-the-shelf classifier trained on clean data. Its normalisation (x - mean) / std (train-pixel statistics) is
applied outside the network and recorded in the JSON config, so the certification engine can fuse it into
msrs.ops.finalize_denoised.

Trained on --data (default "fit": the train split without its validation part, msrs.zoo.digits_split), so that
the validation part stays unseen by every shipped model and can be used to choose the demo's settings.

Writes <out>/digits_classifier.safetensors and <out>/digits_classifier.json (architecture, mean, std,
num_classes, clean test accuracy, command, seed). Deterministic for a seed on CPU with the same torch version.

  python3 scripts/train_classifier.py [--epochs 60] [--seed 0] [--out msrs/assets]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from msrs.zoo import CLASSIFIER_NAME, digits_classifier, digits_split  # noqa: E402


DATA_DESCRIPTION = {
    "train": "scikit-learn load_digits, images / 16; train split = indices i with i % 5 != 0 (1437 images)",
    "fit": "scikit-learn load_digits, images / 16; fit split = the train split (indices i % 5 != 0) without its "
           "validation part (positions j % 5 == 0 inside it): 1149 images (msrs.zoo.digits_split('fit'))",
}


def shift(images: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to max_shift pixels per image (zero fill): a clean-image augmentation."""
    if max_shift <= 0:
        return images
    n = images.shape[0]
    padded = F.pad(images, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    h, w = images.shape[-2:]
    rows = (dy[:, None] + torch.arange(h)[None, :])  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None, :])  # [n, w]
    idx = torch.arange(n)[:, None, None]
    return padded[:, 0][idx, rows[:, :, None], cols[:, None, :]][:, None]


@torch.no_grad()
def accuracy(model, images, labels, mean, std) -> float:
    model.eval()
    logits = model((images - mean) / std)
    return float((logits.argmax(1) == labels).sum().item()) / labels.shape[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--max-shift", type=int, default=1, help="random translation augmentation (pixels, 0 = none)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", choices=("fit", "train"), default="fit",
                   help="training digits: fit (train split minus the validation part, default) or the whole train split")
    p.add_argument("--out", type=Path, default=ROOT / "msrs" / "assets")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(args.seed)

    x_train, y_train = digits_split(args.data)
    x_val, y_val = digits_split("validation")
    x_test, y_test = digits_split("test")
    mean = float(x_train.mean())
    std = float(x_train.std())
    print(f"train {tuple(x_train.shape)} test {tuple(x_test.shape)} mean {mean:.6f} std {std:.6f}", flush=True)

    arch_kwargs = {"num_classes": 10, "in_channels": 1, "width": args.width}
    model = digits_classifier(**arch_kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"digits_classifier: {n_params} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = (x_train.shape[0] + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)

    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(x_train.shape[0], generator=gen)
        total, seen = 0.0, 0
        for i in range(0, perm.numel(), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = shift(x_train[idx], gen, args.max_shift)
            loss = F.cross_entropy(model((xb - mean) / std), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * idx.numel()
            seen += idx.numel()
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            tr = accuracy(model, x_train, y_train, mean, std)
            print(f"epoch {epoch + 1:3d} loss {total / seen:.4f} train_acc {tr:.4f} ({time.time() - start:.0f}s)", flush=True)
    wall = time.time() - start

    test_acc = accuracy(model, x_test, y_test, mean, std)
    val_acc = accuracy(model, x_val, y_val, mean, std)
    print(f"clean validation accuracy {val_acc:.6f} ({round(val_acc * y_val.shape[0])}/{y_val.shape[0]})")
    print(f"clean test accuracy {test_acc:.6f} ({round(test_acc * y_test.shape[0])}/{y_test.shape[0]}), wall {wall:.1f}s")

    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / f"{CLASSIFIER_NAME}.safetensors"))
    config = {
        "architecture": "digits_classifier",
        "architecture_kwargs": arch_kwargs,
        "num_parameters": n_params,
        "num_classes": 10,
        "mean": [mean],
        "std": [std],
        "input": "images in [0, 1], [N, 1, 8, 8]; apply (x - mean) / std before the network",
        "data": DATA_DESCRIPTION[args.data],
        "test_split": "indices i with i % 5 == 0 (360 images)",
        "test_accuracy": test_acc,
        "validation_split": "positions j % 5 == 0 inside the train split (288 images; msrs.zoo.digits_split)",
        "validation_accuracy": val_acc,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "max_shift": args.max_shift,
        "train_wall_seconds": round(wall, 1),
        "torch_version": torch.__version__,
        "command": "python3 " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + list(sys.argv[1:] if argv is None else argv)),
    }
    (args.out / f"{CLASSIFIER_NAME}.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"saved {args.out / CLASSIFIER_NAME}.safetensors/.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
