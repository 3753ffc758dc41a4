"""Diffusion calibration: fine-tune the denoiser for the multi-scale cascade (Jeong & Shin, NeurIPS 2023,
"Multi-scale Diffusion Denoised Smoothing", Sec. 3.3; loss names "Brier loss" and "anti-consistency loss" are
theirs).

  finetune(denoiser, classifier, dataset, *, out_dir, settings=FinetuneSettings(...) or its fields as keywords,
           ...) -> FinetuneResult
  calibration_loss(denoiser, classifier, images, labels, image_ids, *, ...) -> (total, terms)
  add_arguments(parser) / run(args)   the ``msrs finetune`` command

One concept a module:
  settings.py     FinetuneSettings: every training setting, its default and its help text, checked when made;
                  the command's options are generated from it
  objective.py    calibration_loss, the objective below
  randomness.py   the data order and the per-step seeds, functions of (seed, step)
  ema.py          the weight average that is saved as the model
  checkpoints.py  what out_dir holds, the resume checks, the CSV log
  trainer.py      finetune(): arguments, model, resume, steps, result
  command.py      ``msrs finetune``: options and run()

What is fine-tuned. Only the diffusion UNet (all its parameters, AdamW, fp32 master weights, optional autocast),
through exactly the one-shot denoising used at certification time (docs/DESIGN.md): for each cascade sigma,
(t, a) = denoiser.timestep_for(sigma), x_t = a (2 (x + sigma delta) - 1) drawn with msrs.ops.add_noise,
eps = denoiser.predict_eps(x_t, t), and the denoised, classifier-normalised input
((clamp((x_t - sqrt(1 - a^2) eps) / a, -1, 1) + 1) / 2 - mean) / std. The fused ops have no autograd formula, so
that last step is computed with msrs.ops.reference.finalize_denoised (plain torch, differentiable, the contract
every backend is tested against); the noise needs no gradient and comes from the fused op. The classifier is
frozen (eval mode, requires_grad False for the duration of the run) and only passes gradients through.

The objective, per training image x (label y), per cascade sigma s, with M = samples_per_image noisy copies
delta_1..delta_M and q_m = softmax(f(D_s(x + sigma_s delta_m))) (f the classifier, D_s the one-shot denoiser):

  votes      v = #{m : argmax q_m = y} / M                       (hard votes, first maximum wins, as in CERTIFY)
  recoverable(x, s)  :=  v > p0                                    (computed without gradient)
  Brier(x, s)        :=  (1/M) sum_m || q_m - e_y ||^2             in [0, 2]
  AC(x, s)           :=  || qbar * (1 - e_y) ||^2,  qbar = (1/M) sum_m q_m     in [0, 1)   (anti_consistency="wrong")
                     or  || qbar ||^2                                         in [1/K, 1] (anti_consistency="all")
  MSE(x, s)          :=  mean over the M copies and pixels of (eps_theta(x_t, t) - eps*)^2,
                         eps* = (x_t - a (2x - 1)) / sqrt(1 - a^2)  (the noise that makes the one-shot denoising exact)

  total = brier_weight * mean_{x,s}[ 1{recoverable} Brier ] + anti_consistency_weight * mean_{x,s}[ 1{not
          recoverable} AC ] + mse_weight * mean_{x,s} MSE

(means over all B images x L sigmas of a batch, not over the recoverable ones only, so the weights keep their
meaning whatever the recoverable fraction is). The CSV log and the progress bar show the three unweighted means
and the weighted total.

Confirmed by the paper's abstract / review thread (docs: ../shared/SCIENCE.md, section 3): only the diffusion model
is fine-tuned, through the certification-time single-step denoising, with the classifier frozen; a Brier term on
recoverable inputs (consistent, correct denoising) and an anti-consistency term otherwise (do not be confidently
wrong: rather diverse outputs, so that the smoothed classifier at that sigma abstains and the cascade falls back to
a smaller sigma). NOT confirmed here, and msrs's choices (each one a documented, changeable decision):

1. Recoverability rule. Per (image, sigma), from the M samples' hard votes at that sigma: recoverable iff the
   fraction voting for the label exceeds p0, i.e. the M-sample estimate of the smoothed classifier at that sigma
   is correct and confident (the cascade's stage-s test "pA >= p0" with the label as cA). Ties (v = p0) count as
   not recoverable, matching the over-smoothing definition "the true class's probability stays at or below p0".
   Per sigma rather than "the cascade's deciding stage": the cascade certifies at the largest sigma whose
   smoothed classifier is confident, and needs every larger sigma to abstain; applying the rule stage by stage
   trains exactly that (Brier where the stage should certify, anti-consistency where it should abstain and fall
   back), and it does not depend on the Monte Carlo confidence bounds, which are meaningless at M ~ 8. With small
   M the rule is a noisy estimate; it is recomputed on fresh noise at every step.
2. Brier loss: the per-sample squared error averaged over the M samples (an expectation over the smoothing noise),
   not the squared error of the mean prediction; it rewards every sample being correct (consistency), which is
   what raises pA and the radius. Hard votes decide recoverability, soft probabilities carry the gradient.
3. Anti-consistency loss: the squared L2 norm of the mean softmax over the M samples, ||qbar||^2 (the collision
   probability of the mean prediction; anti_consistency="all", the default). It is large exactly when the M
   denoised samples are consistently given one class, and minimised only by diverse outputs (qbar uniform), the
   literal reading of "generate rather diverse outputs otherwise" in the paper's abstract; on a non-recoverable
   input it also lowers a true-class probability that sits at or just below p0, so the stage abstains clearly
   and the cascade falls back to a smaller sigma instead of staying undecided (the cascade abstains outright
   when a stage's confidence interval straddles p0). Squared norm rather than the max wrong-class probability:
   it is smooth and dominated by the largest class (sum_c qbar_c^2 <= max_c qbar_c). The alternative
   anti_consistency="wrong", ||qbar * (1 - e_y)||^2 (wrong classes only, in [0, 1)), never pushes away from the
   true class: it can also be satisfied by moving the wrong mass to the label. On the digits demo
   (scripts/finetune_demo.py, 300 steps, lr 1e-3) "all" raised the cascade's certified accuracy at radius 0 on
   100 test images from 0.32 to 0.53 (ACR 0.042 -> 0.071) while "wrong" lowered it to 0.23 (ACR 0.036): the
   undecided largest-sigma stage is what limits the cascade there, and only "all" resolves it.
4. Epsilon-MSE regulariser: the usual DDPM loss at the cascade's timesteps, evaluated on the same noisy inputs
   (no extra UNet pass). Because t is the first timestep with sqrt(abar_t) <= 1/sqrt(1 + 4 sigma^2), the
   injected noise 2 a sigma delta is not exactly sqrt(1 - a^2) delta; the target eps* is the noise that makes the
   one-shot reconstruction exact ((x_t - sqrt(1 - a^2) eps*) / a = 2x - 1), 0.994 to 1.000 times delta for the
   linear schedule at sigma = 0.25 .. 1. It keeps the denoiser a denoiser (anchors it to the data) while the two
   classifier terms move it.
5. Full fine-tuning of all UNet parameters (no adapters), AdamW, constant learning rate after an optional linear
   warm-up, gradient-norm clipping at max_grad_norm, the UNet in eval mode (dropout off: the objective is the
   function used at certification time), EMA of the weights with the warm-up
   decay_k = min(ema_decay, (1 + k) / (10 + k)) after optimizer step k (as diffusers' EMAModel), so a short
   fine-tune is not dominated by the initial weights. The EMA weights are the saved model.
6. Defaults (FinetuneSettings: 1000 steps, batch 32, M = 4, AdamW lr 1e-3 with 20 warm-up steps, weight decay
   0, clipping at 1, weights Brier 2 / anti-consistency 1 / MSE 1, anti_consistency "all", ema_decay 0.99, p0 0.5)
   are msrs's, not the paper's: they are the settings of the shipped digits demo (scripts/finetune_demo.py),
   chosen by a small sweep on that demo only (lr 1e-4 barely moved the 0.9M-parameter UNet in 300 steps; Brier
   weight 2 gave the best average certified radius of 1 and 2; the paper itself treats the Brier weight as a knob
   that raises robustness and may cost clean accuracy). A large pretrained DDPM likely wants a smaller learning rate.

Reproducibility and resume. Everything random is a function of (seed, step), never of state carried across steps:
the data order is a fresh permutation per epoch, torch.randperm with a generator seeded by hash(seed, epoch);
the noise of training image i (its index in the data set) at step k, copy m, sigma level l (the l-th smallest
sigma) is msrs.ops's Philox noise keyed by (seed, image id i, sample index k * M + m, stream
msrs.streams.finetune(l) = 1024 + l), never a certification stream, so a model is not certified on its training
noise; any other global-RNG use inside a step is seeded by hash(seed, k) in a forked RNG state, so the caller's RNG
is left untouched (msrs.finetune.randomness). A checkpoint (every checkpoint_every steps and at the end) writes
  out_dir/unet/, out_dir/scheduler/   the EMA model, loadable with DiffusionDenoiser.from_pretrained(out_dir)
  out_dir/finetune.json               the fine-tuning settings, step, wall time, versions
  out_dir/state/                      raw.safetensors (trained weights), ema.safetensors, optimizer.pt (AdamW
                                      state, torch.load(weights_only=True)), scaler.pt (fp16 only), trainer.json
                                      (state version, step, elapsed seconds, settings)
  out_dir/log.csv                     one row per step (rows after the last checkpoint are dropped on resume)
and a run started again with the same settings continues from the last checkpoint with bit-for-bit the same
weights as an uninterrupted run (checked on CPU; on CUDA it additionally needs deterministic kernels, e.g.
torch.use_deterministic_algorithms(True)). Settings that change the trajectory must match the checkpoint's (a
ValueError names those that differ; the data, the classifier and the initial denoiser are compared by
msrs.fingerprint.tensor_digest of their tensors); checkpoint_every may change, and steps may be raised to
continue training. A training state of another version (checkpoints.STATE_VERSION; version 1, before the
package, recorded digests computed differently) is refused with a message that says so.
"""
from __future__ import annotations

from .. import streams
from .checkpoints import log_columns
from .command import add_arguments, run
from .objective import calibration_loss
from .randomness import batch_indices
from .settings import FinetuneSettings
from .trainer import FinetuneResult, finetune

__all__ = [
    "FINETUNE_STREAM",
    "FinetuneResult",
    "FinetuneSettings",
    "add_arguments",
    "batch_indices",
    "calibration_loss",
    "finetune",
    "log_columns",
    "run",
]

FINETUNE_STREAM = streams.finetune(0)  # kept for compatibility: the noise stream of sigma level 0 (msrs.streams)
