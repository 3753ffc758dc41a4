"""Diffusion calibration (msrs.finetune) on tiny random models: objective, frozen classifier, exact resume,
checkpoint format, CSV log, argument errors, the CLI."""
from __future__ import annotations

import argparse
import csv
import json
import warnings

import pytest
import torch
from torch import nn

from msrs import finetune as ft
from msrs.denoiser import DiffusionDenoiser
from msrs.finetune import objective

SIGMAS = (0.25, 0.5, 1.0)
FAST = dict(sigmas=SIGMAS, batch_size=4, samples_per_image=2, lr=1e-3, dtype="float32", backend="torch",
            progress=False, seed=3)


def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)


def tiny_denoiser():
    from diffusers import DDPMScheduler

    return DiffusionDenoiser(tiny_unet(), DDPMScheduler(num_train_timesteps=1000)).eval()


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))

    def forward(self, x):
        return self.net(x)


def tiny_classifier():
    torch.manual_seed(1)
    return TinyClassifier().eval()


def tiny_data(n=12):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(n, 1, 8, 8, generator=g)
    labels = torch.arange(n) % 10
    return images, labels


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def read_log(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


# ------------------------------------------------------------------------------------------------------ objective
def test_optimizer_steps_reduce_the_objective_on_a_fixed_batch():
    den, clf = tiny_denoiser(), tiny_classifier()
    for p in clf.parameters():
        p.requires_grad_(False)
    images, labels = tiny_data(6)
    ids = torch.arange(6)
    kw = dict(sigmas=SIGMAS, samples_per_image=4, seed=5, step=7, backend="torch")
    before, terms0 = ft.calibration_loss(den, clf, images, labels, ids, **kw)
    again, _ = ft.calibration_loss(den, clf, images, labels, ids, **kw)
    assert torch.equal(before, again)  # same (seed, step, ids): same noise, same value
    opt = torch.optim.AdamW(den.parameters(), lr=1e-3)
    for _ in range(3):
        loss, _ = ft.calibration_loss(den, clf, images, labels, ids, **kw)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, terms1 = ft.calibration_loss(den, clf, images, labels, ids, **kw)
    assert terms1["recoverable_sigma"] == terms0["recoverable_sigma"]  # the same pieces of the objective
    assert after.item() < before.item()
    for name in ("brier", "anti_consistency", "mse", "total", "recoverable", "sample_accuracy"):
        assert name in terms0


def test_objective_terms_follow_the_recoverability_rule():
    """A classifier that always answers the label: every pair is recoverable, AC is 0; one that never does:
    nothing is recoverable, Brier is 0."""
    den = tiny_denoiser()
    images, labels = tiny_data(4)
    labels = torch.full((4,), 3)

    class Constant(nn.Module):
        def __init__(self, cls):
            super().__init__()
            self.cls = cls

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 10)
            logits[:, self.cls] = 5.0
            return logits + 0 * x.flatten(1).sum(1, keepdim=True)  # keeps the graph connected to x

    kw = dict(sigmas=SIGMAS, samples_per_image=2, seed=0, step=0, backend="torch")
    _, right = ft.calibration_loss(den, Constant(3), images, labels, torch.arange(4), **kw)
    assert right["recoverable"] == 1.0 and right["anti_consistency"] == 0.0 and right["brier"] > 0
    assert right["sample_accuracy"] == 1.0
    _, wrong = ft.calibration_loss(den, Constant(7), images, labels, torch.arange(4), anti_consistency="wrong",
                                   **kw)
    p_wrong = torch.softmax(torch.tensor([5.0] + [0.0] * 9), 0)[0].item()  # the one wrong class's probability
    assert wrong["recoverable"] == 0.0 and wrong["brier"] == 0.0
    # wrong classes: 7 with p, the 8 others except the label 3 with (1 - p) / 9 each
    assert wrong["anti_consistency"] == pytest.approx(p_wrong ** 2 + 8 * ((1 - p_wrong) / 9) ** 2, rel=1e-5)
    _, wrong_all = ft.calibration_loss(den, Constant(7), images, labels, torch.arange(4), anti_consistency="all",
                                       **kw)
    assert wrong_all["anti_consistency"] == pytest.approx(p_wrong ** 2 + (1 - p_wrong) ** 2 / 9, rel=1e-5)
    p_right = p_wrong  # Brier of a correct answer with probability p: (1 - p)^2 + 9 ((1 - p) / 9)^2
    assert right["brier"] == pytest.approx((1 - p_right) ** 2 + (1 - p_right) ** 2 / 9, rel=1e-5)


class Recording(nn.Module):
    """Wraps a classifier; keeps its answers (argmax) on the last batch it classified."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.answers = inner, None

    def forward(self, x):
        out = self.inner(x)
        self.answers = out.argmax(1).detach()
        return out


def objective_by_hand(den, clf, x_t, timesteps, labels, levels, m, p0, brier_weight, ac_weight):
    """The Brier + anti-consistency objective of the module docstring (anti_consistency="all", mean 0, std 1),
    written out here from the UNet's eps on the recorded noisy inputs x_t (rows: level, image, copy)."""
    a = torch.tensor([den.timestep_for(s)[1] for s in SIGMAS], dtype=torch.float32).repeat_interleave(x_t.shape[0] //
                                                                                                     levels)
    a = a[:, None, None, None]
    eps = den.predict_eps(x_t, timesteps)
    x0 = ((x_t - torch.sqrt(1 - a * a) * eps) / a).clamp(-1, 1)
    probs = torch.softmax(clf((x0 + 1) / 2), dim=1).reshape(levels, -1, m, 10)
    onehot = nn.functional.one_hot(labels, 10).to(torch.float32)
    recoverable = ((probs.argmax(3) == labels[None, :, None]).to(torch.float32).mean(2) > p0).to(torch.float32)
    brier = (recoverable * (probs - onehot[None, :, None]).square().sum(3).mean(2)).mean()
    anti = ((1 - recoverable) * probs.mean(2).square().sum(2)).mean()
    return brier_weight * brier + ac_weight * anti, recoverable


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0)], ids=["brier", "anti_consistency"])
def test_brier_and_anti_consistency_gradients_reach_the_unet(weights, monkeypatch):
    """With the eps-MSE off, each of the two calibration terms has a gradient with respect to the UNet's weights,
    and it equals the gradient of the same term written out here (clamp, [0, 1] and classifier after the UNet's
    eps). A finalisation fed a detached eps would leave these terms without any path to the UNet."""
    den, clf = tiny_denoiser(), tiny_classifier()
    for p in clf.parameters():
        p.requires_grad_(False)
    images, _ = tiny_data(6)
    ids, m = torch.arange(6), 2
    kw = dict(sigmas=SIGMAS, samples_per_image=m, seed=5, step=7, backend="torch", mse_weight=0.0)
    recording = Recording(clf)
    seen = []
    original = objective._predict_eps

    def record(denoiser, x_t, timesteps, autocast):
        seen.append((x_t.detach().clone(), timesteps.clone()))
        return original(denoiser, x_t, timesteps, autocast)

    monkeypatch.setattr(objective, "_predict_eps", record)
    ft.calibration_loss(den, recording, images, torch.zeros(6, dtype=torch.int64), ids, **kw)
    answers = recording.answers.reshape(len(SIGMAS), 6, m)[0, :, 0]
    labels = torch.where(ids < 3, answers, (answers + 1) % 10)  # some pairs recoverable (Brier), some not (AC)

    seen.clear()
    total, terms = ft.calibration_loss(den, clf, images, labels, ids, brier_weight=weights[0],
                                       anti_consistency_weight=weights[1], **kw)
    assert 0 < terms["recoverable"] < 1
    assert total.requires_grad, "the calibration terms have no gradient path to the UNet"
    params = list(den.parameters())
    got = torch.autograd.grad(total, params, allow_unused=True)
    (x_t, timesteps), = seen
    mine, recoverable = objective_by_hand(den, clf, x_t, timesteps, labels, len(SIGMAS), m, 0.5, *weights)
    assert recoverable.mean().item() == pytest.approx(terms["recoverable"])
    assert mine.item() == pytest.approx(total.item(), rel=1e-5)
    want = torch.autograd.grad(mine, params)
    flat_got = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(got, params)])
    flat_want = torch.cat([g.reshape(-1) for g in want])
    assert flat_want.norm() > 0
    # measured: 0 (the same fp32 arithmetic); 1e-4 leaves room for a reordering of the same formula
    assert (flat_got - flat_want).norm() <= 1e-4 * flat_want.norm()


def test_batch_indices_cover_each_epoch_once_and_are_deterministic():
    n, b = 10, 4
    seq = torch.cat([ft.batch_indices(0, s, b, n) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(seq[:10].tolist()) == list(range(10)) and sorted(seq[10:].tolist()) == list(range(10))
    assert torch.equal(ft.batch_indices(0, 3, b, n), ft.batch_indices(0, 3, b, n))
    assert not torch.equal(seq[:10], torch.cat([ft.batch_indices(1, s, b, n) for s in range(5)])[:10])


# ------------------------------------------------------------------------------------------------------- training
def test_classifier_is_frozen_and_left_as_it_was(tmp_path):
    """The classifier only passes gradients through: during the run its weights do not require gradients (so no
    gradient is computed or stored for them), and afterwards its flags and mode are restored."""
    den, clf = tiny_denoiser(), tiny_classifier()
    before_clf, before_den = state(clf), state(den)
    flags = [p.requires_grad for p in clf.parameters()]
    assert all(flags)  # a trainable classifier in training mode: freezing it is finetune's job
    clf.train()
    during = []
    clf.register_forward_hook(lambda module, args, out: during.append(
        (module.training, [p.requires_grad for p in module.parameters()])))
    result = ft.finetune(den, clf, tiny_data(), out_dir=tmp_path / "ft", steps=2, **FAST)
    assert during and all(not training and not any(grads) for training, grads in during)
    assert all(p.grad is None for p in clf.parameters())
    assert_same_tensors(state(clf), before_clf)
    assert [p.requires_grad for p in clf.parameters()] == flags and clf.training
    assert_same_tensors(state(den), before_den)  # the input denoiser is not modified: a copy is trained
    changed = any(not torch.equal(a, b) for a, b in zip(state(result.raw_denoiser).values(), before_den.values()))
    assert changed


def test_resume_is_bit_for_bit(tmp_path, monkeypatch):
    data = tiny_data()
    full = ft.finetune(tiny_denoiser(), tiny_classifier(), data, out_dir=tmp_path / "full", steps=4,
                       checkpoint_every=2, **FAST)

    # stop after 2 steps (a finished run), then go on to 4 ...
    ft.finetune(tiny_denoiser(), tiny_classifier(), data, out_dir=tmp_path / "split", steps=2, **FAST)
    resumed = ft.finetune(tiny_denoiser(), tiny_classifier(), data, out_dir=tmp_path / "split", steps=4, **FAST)
    assert_same_tensors(state(resumed.raw_denoiser), state(full.raw_denoiser))
    assert_same_tensors(state(resumed.denoiser), state(full.denoiser))

    # ... and an interrupted run: checkpoint at 2, step 3 logged but not checkpointed, crash in step 4
    original = ft.calibration_loss

    def crashing(*args, step, **kwargs):
        if step == 3:
            raise KeyboardInterrupt
        return original(*args, step=step, **kwargs)

    monkeypatch.setattr(ft, "calibration_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(tiny_denoiser(), tiny_classifier(), data, out_dir=tmp_path / "crash", steps=4,
                    checkpoint_every=2, **FAST)
    assert len(read_log(tmp_path / "crash" / "log.csv")[1]) == 3
    monkeypatch.setattr(ft, "calibration_loss", original)
    again = ft.finetune(tiny_denoiser(), tiny_classifier(), data, out_dir=tmp_path / "crash", steps=4,
                        checkpoint_every=2, **FAST)
    assert_same_tensors(state(again.raw_denoiser), state(full.raw_denoiser))
    assert_same_tensors(state(again.denoiser), state(full.denoiser))
    from safetensors.torch import load_file

    for name in ("raw.safetensors", "ema.safetensors"):
        assert_same_tensors(load_file(str(tmp_path / "crash" / "state" / name)),
                            load_file(str(tmp_path / "full" / "state" / name)))

    def losses(path):
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in read_log(path)[1]]

    assert losses(tmp_path / "crash" / "log.csv") == losses(tmp_path / "full" / "log.csv")
    assert losses(tmp_path / "split" / "log.csv") == losses(tmp_path / "full" / "log.csv")

    # a finished run asked again for the same steps does nothing and returns the same model
    done = ft.finetune(tiny_denoiser(), tiny_classifier(), data, out_dir=tmp_path / "full", steps=4, **FAST)
    assert_same_tensors(state(done.denoiser), state(full.denoiser))


def test_checkpoint_loads_with_from_pretrained_and_log_has_the_right_rows(tmp_path):
    out = tmp_path / "ft"
    result = ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=out, steps=3,
                         checkpoint_every=2, ema_decay=0.9, **FAST)
    loaded = DiffusionDenoiser.from_pretrained(out)
    assert_same_tensors(state(loaded), state(result.denoiser))
    assert not all(torch.equal(a, b) for a, b in zip(state(loaded).values(), state(result.raw_denoiser).values()))
    assert loaded.timestep_for(0.5) == (259, result.denoiser.timestep_for(0.5)[1])
    record = json.loads((out / "finetune.json").read_text())
    assert record["step"] == 3 and record["settings"]["sigmas"] == list(SIGMAS)

    columns, rows = read_log(out / "log.csv")
    assert columns == ft.log_columns(SIGMAS)
    assert columns[:6] == ["step", "total", "brier", "anti_consistency", "mse", "recoverable"]
    assert {"recoverable_sigma_0.25", "recoverable_sigma_0.5", "recoverable_sigma_1", "lr", "wall_time"} <= set(columns)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    w = record["settings"]
    for r in rows:
        total = (w["brier_weight"] * float(r["brier"]) + w["anti_consistency_weight"] * float(r["anti_consistency"])
                 + w["mse_weight"] * float(r["mse"]))
        assert float(r["total"]) == pytest.approx(total, rel=1e-4, abs=1e-6)
        assert 0.0 <= float(r["recoverable"]) <= 1.0
        assert float(r["lr"]) == pytest.approx(1e-3 * min(1.0, int(r["step"]) / w["warmup_steps"]))  # warm-up
    assert float(rows[-1]["wall_time"]) >= float(rows[0]["wall_time"]) >= 0


def test_bf16_autocast_and_gradient_checkpointing_run(tmp_path):
    data = tiny_data()
    plain = ft.finetune(tiny_denoiser(), tiny_classifier(), data, out_dir=tmp_path / "a", steps=1, **FAST)
    ckpt = ft.finetune(tiny_denoiser(), tiny_classifier(), data, out_dir=tmp_path / "b", steps=1,
                       gradient_checkpointing=True, **FAST)
    for a, b in zip(state(plain.raw_denoiser).values(), state(ckpt.raw_denoiser).values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    bf16 = ft.finetune(tiny_denoiser(), tiny_classifier(), data, out_dir=tmp_path / "c", steps=1,
                       **{**FAST, "dtype": "bfloat16"})
    assert all(torch.isfinite(v).all() for v in state(bf16.raw_denoiser).values())
    assert json.loads((tmp_path / "c" / "finetune.json").read_text())["settings"]["dtype"] == "bfloat16"


# -------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name, value", [
    ("steps", 0), ("batch_size", 0), ("batch_size", 13), ("samples_per_image", 0), ("lr", 0.0), ("lr", float("nan")),
    ("weight_decay", -1.0), ("brier_weight", -0.5), ("p0", 0.4), ("p0", 1.0), ("ema_decay", 1.0),
    ("checkpoint_every", 0), ("seed", -1), ("sigmas", ()), ("sigmas", (0.5, -1.0)), ("sigmas", (0.5, 0.5)),
    ("sigmas", (1000.0,)), ("dtype", "int8"), ("dtype", "float16"), ("mean", (0.5,)), ("std", (0.0,)),
    ("mean", (0.1, 0.2)), ("backend", "cuda"), ("out_dir", None), ("warmup_steps", -1), ("max_grad_norm", 0.0),
    ("anti_consistency", "max"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(tmp_path, name, value):
    kwargs = {**FAST, "out_dir": tmp_path / "x", "steps": 1}
    kwargs[name] = value
    if name == "std":
        kwargs["mean"] = (0.5,)
    with pytest.raises(ValueError, match=name):
        ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), **kwargs)


def test_more_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="brier_weight, anti_consistency_weight, mse_weight"):
        ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "x", steps=1,
                    **{**FAST, "brier_weight": 0, "anti_consistency_weight": 0, "mse_weight": 0})
    with pytest.raises(ValueError, match="dataset"):
        ft.finetune(tiny_denoiser(), tiny_classifier(), (torch.rand(4, 1, 8, 8) * 2, torch.zeros(4)),
                    out_dir=tmp_path / "x", steps=1, **FAST)
    with pytest.raises(ValueError, match="dataset"):
        ft.finetune(tiny_denoiser(), tiny_classifier(), (torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64)),
                    out_dir=tmp_path / "x", steps=1, **FAST)
    with pytest.raises(ValueError, match="denoiser"):
        ft.finetune(nn.Linear(2, 2), tiny_classifier(), tiny_data(), out_dir=tmp_path / "x", steps=1, **FAST)
    # resuming with settings that change the trajectory
    ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "r", steps=1, **FAST)
    with pytest.raises(ValueError, match="resume.*lr"):
        ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "r", steps=2,
                    **{**FAST, "lr": 5e-4})
    ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "r", steps=2, **FAST)
    with pytest.raises(ValueError, match="steps"):
        ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "r", steps=1, **FAST)
    # resume=False starts over
    fresh = ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "r", steps=1,
                        resume=False, **{**FAST, "lr": 5e-4})
    assert fresh.step == 1 and len(read_log(tmp_path / "r" / "log.csv")[1]) == 1


# ----------------------------------------------------------------------------------------------------------- CLI
def _parser():
    p = argparse.ArgumentParser()
    ft.add_arguments(p)
    return p


def test_cli_runs_end_to_end(tmp_path, capsys):
    from safetensors.torch import save_file

    tiny_denoiser().save_pretrained(tmp_path / "den")
    (tmp_path / "clf.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))\n")
    torch.manual_seed(1)
    clf = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    save_file(clf.state_dict(), str(tmp_path / "clf.safetensors"))
    args = _parser().parse_args([
        "--denoiser", str(tmp_path / "den"), "--classifier", f"{tmp_path / 'clf.py'}:make",
        "--weights", str(tmp_path / "clf.safetensors"), "--mean", "0.3", "--std", "0.4", "--dataset", "digits",
        "--sigmas", "0.25,0.5", "1.0", "--steps", "2", "--batch-size", "4", "--samples-per-image", "2",
        "--out", str(tmp_path / "out"), "--dtype", "float32", "--backend", "torch", "--quiet", "--device", "cpu"])
    assert ft.run(args) == 0
    assert "wrote" in capsys.readouterr().out
    DiffusionDenoiser.from_pretrained(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert record["settings"]["num_images"] == 1437  # the digits train split
    assert record["settings"]["mean"] == [pytest.approx(0.3)]


@pytest.mark.parametrize("argv, name", [
    (["--steps", "0"], "steps"), (["--batch-size", "-1"], "batch-size"), (["--sigmas", "0.5,abc"], "sigmas"),
    (["--sigmas", "-0.5"], "sigmas"), (["--lr", "0"], "lr"), (["--p0", "0.3"], "p0"),
    (["--ema-decay", "1"], "ema-decay"), (["--brier-weight", "-1"], "brier-weight"),
    (["--samples-per-image", "0"], "samples-per-image"), (["--weights", "w.safetensors"], "weights"),
    (["--denoiser", "/nonexistent/folder"], "denoiser"), (["--dtype", "float16", "--device", "cpu"], "dtype"),
    (["--device", "nonsense"], "device"), (["--classifier", "demo", "--weights", "w.safetensors"], "weights"),
])
def test_cli_bad_arguments(tmp_path, argv, name):
    args = _parser().parse_args(["--out", str(tmp_path / "out"), "--quiet"] + argv)
    with pytest.raises(ValueError, match=name):
        ft.run(args)


# ------------------------------------------------------------ found by mutation testing: msrs/finetune/objective.py
def test_objective_refuses_any_label_beyond_the_classifier():
    """One label out of range among valid ones is refused by name (not left to one_hot's error)."""
    den, clf = tiny_denoiser(), tiny_classifier()
    images, _ = tiny_data(2)
    with pytest.raises(ValueError, match="label 10"):
        ft.calibration_loss(den, clf, images, torch.tensor([0, 10]), torch.arange(2), sigmas=SIGMAS,
                            samples_per_image=1, backend="torch")


def test_objective_classifier_runs_under_the_requested_autocast_dtype():
    """autocast_dtype is the dtype the classifier runs in (float16 here: not the CPU's default autocast dtype,
    bfloat16), and None runs it without autocast."""
    den = tiny_denoiser()
    images, labels = tiny_data(2)
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_classifier()

        def forward(self, x):
            enabled = torch.is_autocast_enabled("cpu")
            seen.append(torch.get_autocast_dtype("cpu") if enabled else None)
            return self.inner(x)

    for dtype in (torch.float16, None):
        seen.clear()
        ft.calibration_loss(den, Probe(), images, labels, torch.arange(2), sigmas=SIGMAS, samples_per_image=1,
                            backend="torch", autocast_dtype=dtype)
        assert seen == [dtype]


def test_objective_mse_is_against_the_noise_of_the_clean_image(monkeypatch):
    """The eps-MSE term, written out from the recorded noisy inputs: eps* = (x_t - a (2 x - 1)) / sqrt(1 - a^2), the
    noise that makes the one-shot reconstruction of the clean image x (in [-1, 1]) exact."""
    den, clf = tiny_denoiser(), tiny_classifier()
    images, labels = tiny_data(3)
    m, seen = 2, []
    original = objective._predict_eps

    def record(denoiser, x_t, timesteps, autocast):
        seen.append((x_t.detach().clone(), timesteps.clone()))
        return original(denoiser, x_t, timesteps, autocast)

    monkeypatch.setattr(objective, "_predict_eps", record)
    _, terms = ft.calibration_loss(den, clf, images, labels, torch.arange(3), sigmas=SIGMAS, samples_per_image=m,
                                   seed=4, step=1, backend="torch")
    (x_t, timesteps), = seen
    a = torch.tensor([den.timestep_for(s)[1] for s in SIGMAS], dtype=torch.float64).repeat_interleave(3 * m)
    a = a[:, None, None, None]
    clean = (2 * images.double() - 1).repeat_interleave(m, dim=0).repeat(len(SIGMAS), 1, 1, 1)
    target = (x_t.double() - a * clean) / torch.sqrt(1 - a * a)
    with torch.no_grad():
        eps = den.predict_eps(x_t, timesteps).double()
    assert terms["mse"] == pytest.approx((eps - target).square().mean().item(), rel=1e-4)


def test_objective_runs_a_denoiser_without_an_autocast_argument_under_the_requested_autocast():
    """A denoiser whose predict_eps takes no autocast_dtype runs inside torch.autocast at the requested dtype
    (float16: not the CPU's default, bfloat16), and without autocast for None."""
    den = tiny_denoiser()
    images, labels = tiny_data(2)
    seen = []

    class Plain:
        def timestep_for(self, sigma):
            return den.timestep_for(sigma)

        def predict_eps(self, x_t, timesteps):
            enabled = torch.is_autocast_enabled("cpu")
            seen.append(torch.get_autocast_dtype("cpu") if enabled else None)
            return den.predict_eps(x_t, timesteps, autocast_dtype=None)

    for dtype in (torch.float16, None):
        seen.clear()
        with warnings.catch_warnings():  # None: no autocast at all (not one at float32, which torch refuses)
            warnings.simplefilter("error", UserWarning)
            ft.calibration_loss(Plain(), tiny_classifier(), images, labels, torch.arange(2), sigmas=SIGMAS,
                                samples_per_image=1, backend="torch", autocast_dtype=dtype)
        assert seen == [dtype]


def test_wrong_class_anti_consistency_has_a_gradient():
    """anti_consistency="wrong" alone (Brier and MSE weights 0): the term reaches the UNet's weights."""
    den, clf = tiny_denoiser(), tiny_classifier()
    for p in clf.parameters():
        p.requires_grad_(False)
    images, labels = tiny_data(4)
    total, terms = ft.calibration_loss(den, clf, images, labels, torch.arange(4), sigmas=SIGMAS, samples_per_image=2,
                                       backend="torch", anti_consistency="wrong", brier_weight=0.0, mse_weight=0.0)
    assert terms["recoverable"] < 1 and terms["anti_consistency"] > 0
    grads = torch.autograd.grad(total, list(den.parameters()), allow_unused=True)
    assert sum(float(g.norm()) for g in grads if g is not None) > 0
