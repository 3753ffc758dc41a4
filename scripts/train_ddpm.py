#!/usr/bin/env python3
"""Train the shipped demo DDPM: a small diffusers UNet2DModel on the digits train split, off-the-shelf style.

Standard DDPM (Ho et al. 2020): DDPMScheduler(num_train_timesteps=1000, linear beta 1e-4..0.02), images mapped to
[-1, 1], timesteps drawn uniformly from the full range, epsilon-MSE loss, AdamW, EMA of the weights (the EMA
weights are saved). Nothing in it knows about smoothing, the sigmas or the classifier. A fixed number of steps,
deterministic for a seed on CPU with the same torch version.

Trained on --data (default "fit": the train split without its validation part, msrs.zoo.digits_split), so that
the validation part stays unseen by every shipped model and can be used to choose the demo's settings.

Saves with DiffusionDenoiser.save_pretrained to <out> (unet/ + scheduler/) plus <out>/train_info.json (config,
loss curve, command, wall time, evaluation). The evaluation at the end measures, on the DESIGN.md test split, the
demo classifier's accuracy on clean digits, on noisy digits x + sigma eps and after one-shot denoising, and the
denoiser's MSE to the clean images, for sigma in {0.25, 0.5, 1.0}.

  python3 scripts/train_ddpm.py [--steps 4000] [--threads 1] [--seed 0] [--out msrs/assets/digits_ddpm]
  python3 scripts/train_ddpm.py --eval-only [--out msrs/assets/digits_ddpm]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from msrs.zoo import digits_split  # noqa: E402

SIGMAS = (0.25, 0.5, 1.0)


def make_unet(width: int, layers_per_block: int, attention: bool):
    from diffusers import UNet2DModel

    down = ("DownBlock2D", "AttnDownBlock2D" if attention else "DownBlock2D")
    up = ("AttnUpBlock2D" if attention else "UpBlock2D", "UpBlock2D")
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(width, 2 * width),
        layers_per_block=layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=min(32, width),
        attention_head_dim=8 if attention else None,
        add_attention=attention,
    )


@torch.no_grad()
def ema_update(ema, model, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def evaluate(denoiser, x_test, y_test, *, draws: int = 10, seed: int = 1234) -> dict:
    """Classifier accuracy clean / noisy / denoised and denoiser MSE per sigma, over `draws` noise draws."""
    from msrs.zoo import load_demo_classifier

    clf, mean, std, _ = load_demo_classifier("cpu")
    mean_t = torch.tensor(mean).reshape(1, -1, 1, 1)
    std_t = torch.tensor(std).reshape(1, -1, 1, 1)

    def acc(images):
        return float((clf((images - mean_t) / std_t).argmax(1) == y_rep).double().mean())

    y_rep = y_test
    result = {"clean_accuracy": acc(x_test), "draws": draws, "noise_seed": seed, "per_sigma": {}}
    gen = torch.Generator().manual_seed(seed)
    x_rep = x_test.repeat(draws, 1, 1, 1)
    y_rep = y_test.repeat(draws)
    for sigma in SIGMAS:
        noisy = x_rep + sigma * torch.randn(x_rep.shape, generator=gen)
        den = torch.cat([denoiser.denoise_noisy(chunk, sigma, backend="torch") for chunk in noisy.split(1024)])
        t, a = denoiser.timestep_for(sigma)
        result["per_sigma"][str(sigma)] = {
            "t": t,
            "sqrt_abar": a,
            "noisy_accuracy": acc(noisy),
            "noisy_clipped_accuracy": acc(noisy.clamp(0, 1)),
            "denoised_accuracy": acc(den),
            "noisy_mse": float((noisy - x_rep).pow(2).mean()),
            "denoised_mse": float((den - x_rep).pow(2).mean()),
        }
    return result


def print_eval(ev: dict) -> None:
    print(f"classifier clean test accuracy {ev['clean_accuracy']:.4f}")
    print("sigma    t   noisy_acc  noisy_clip_acc  denoised_acc   noisy_mse  denoised_mse")
    for s, r in ev["per_sigma"].items():
        print(f"{s:5}  {r['t']:3d}   {r['noisy_accuracy']:.4f}     {r['noisy_clipped_accuracy']:.4f}          "
              f"{r['denoised_accuracy']:.4f}       {r['noisy_mse']:.4f}     {r['denoised_mse']:.4f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=250)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--width", type=int, default=32, help="block_out_channels = (width, 2 * width)")
    p.add_argument("--layers-per-block", type=int, default=2)
    p.add_argument("--attention", action="store_true", help="self-attention at 4x4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", choices=("fit", "train"), default="fit",
                   help="training digits: fit (train split minus the validation part, default) or the whole train split")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=ROOT / "msrs" / "assets" / "digits_ddpm")
    p.add_argument("--eval-only", action="store_true", help="evaluate the saved model at --out, train nothing")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    from diffusers import DDPMScheduler

    from msrs.denoiser import DiffusionDenoiser

    x_train, _ = digits_split(args.data)
    x_test, y_test = digits_split("test")

    if args.eval_only:
        den = DiffusionDenoiser.from_pretrained(args.out).eval()
        print_eval(evaluate(den, x_test, y_test))
        return 0

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    model = make_unet(args.width, args.layers_per_block, args.attention)
    n_params = sum(q.numel() for q in model.parameters())
    print(f"UNet2DModel: {n_params} parameters; train {tuple(x_train.shape)}", flush=True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def lr_at(step):  # linear warm-up, then cosine decay to 10%
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(args.seed)
    data = x_train * 2.0 - 1.0
    n = data.shape[0]
    perm, pos = torch.randperm(n, generator=gen), 0
    losses, running, count = [], 0.0, 0
    start = time.time()
    model.train()
    for step in range(args.steps):
        if pos + args.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        x0 = data[perm[pos : pos + args.batch_size]]
        pos += args.batch_size
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        x_t = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(model(x_t, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
        running += loss.item()
        count += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.time() - start
            losses.append({"step": step + 1, "loss": running / count, "seconds": round(elapsed, 1)})
            eta = elapsed / (step + 1) * (args.steps - step - 1)
            print(f"step {step + 1:6d} loss {running / count:.5f} lr {sched.get_last_lr()[0]:.2e} "
                  f"({elapsed:.0f}s, eta {eta:.0f}s)", flush=True)
            running, count = 0.0, 0
    wall = time.time() - start
    print(f"training wall time {wall:.1f}s", flush=True)

    denoiser = DiffusionDenoiser(ema, scheduler).eval()
    denoiser.save_pretrained(args.out)
    info = {
        "num_parameters": n_params,
        "unet": {"width": args.width, "layers_per_block": args.layers_per_block, "attention": args.attention},
        "scheduler": "DDPMScheduler(num_train_timesteps=1000, linear beta 1e-4..0.02), epsilon prediction",
        "objective": "epsilon MSE, t ~ U{0..999}, images 2x-1, no augmentation",
        "data": {"train": "scikit-learn load_digits / 16, train split (i % 5 != 0, 1437 images)",
                 "fit": "scikit-learn load_digits / 16, fit split: the train split (i % 5 != 0) without its "
                        "validation part (positions j % 5 == 0 inside it), 1149 images"}[args.data],
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup": args.warmup,
        "weight_decay": args.weight_decay,
        "ema_decay": args.ema_decay,
        "saved_weights": "EMA",
        "seed": args.seed,
        "train_wall_seconds": round(wall, 1),
        "torch_version": torch.__version__,
        "command": "python3 " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)]
                                          + list(sys.argv[1:] if argv is None else argv)),
        "loss_log": losses,
    }
    (args.out / "train_info.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"saved {args.out}", flush=True)
    if args.no_eval:
        return 0
    try:
        ev = evaluate(DiffusionDenoiser.from_pretrained(args.out).eval(), x_test, y_test)
    except FileNotFoundError as exc:  # the demo classifier is not there yet
        print(f"evaluation skipped: {exc}")
        return 0
    print_eval(ev)
    info["evaluation"] = ev
    (args.out / "train_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
