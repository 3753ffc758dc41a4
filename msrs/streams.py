"""The numbering of the noise streams: which Monte Carlo samples are independent of which.

Every sample's noise is Philox keyed by (seed, image id, sample index, stream) (msrs.ops.philox), so two sets of
samples are independent exactly when their streams differ, and a stream's samples can be drawn in any order, batch
or split over ranks.  This module is the only place that assigns stream numbers:

  selection(stage)    the n0 samples that choose a cascade stage's class (stage 0 = the largest sigma; a
                      single-sigma certify is stage 0)
  estimation(stage)   the n samples whose counts give that stage's confidence bounds; independent of the
                      selection samples, as Cohen et al.'s CERTIFY requires
  PREDICT             Cohen et al.'s PREDICT
  finetune(level)     the noise of diffusion fine-tuning at the level-th sigma: never a certification stream, so
                      a model is never certified on the noise it was trained on
"""
from __future__ import annotations

__all__ = ["FINETUNE_BASE", "MAX_STAGES", "PREDICT", "estimation", "finetune", "selection", "stage_of"]

MAX_STAGES = 64  # cascade stages that have streams of their own (0 .. 127)
PREDICT = 2 * MAX_STAGES
FINETUNE_BASE = 1024


def _stage(stage: int) -> int:
    if not 0 <= stage < MAX_STAGES:
        raise ValueError(f"stage: expected 0 <= stage < {MAX_STAGES}, got {stage}")
    return stage


def selection(stage: int) -> int:
    return 2 * _stage(stage)


def estimation(stage: int) -> int:
    return 2 * _stage(stage) + 1


def stage_of(stream: int) -> int:
    """The cascade stage a selection or estimation stream belongs to."""
    if not 0 <= stream < PREDICT:
        raise ValueError(f"stream: {stream} is not a cascade stream")
    return stream // 2


def finetune(level: int) -> int:
    if level < 0:
        raise ValueError(f"level: expected >= 0, got {level}")
    return FINETUNE_BASE + level
