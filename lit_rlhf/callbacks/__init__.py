"""Callbacks for RLHF runs, each switchable in YAML under ``trainer.callbacks``.

- :class:`KLTracker`: KL to the reference per token and per sequence, running mean, quantiles; warns
  (and optionally checkpoints and stops) when the KL passes a bound.
- :class:`PretrainMixLogger`: the PPO-ptx mix: ptx loss, gamma_ptx, ptx/PPO gradient-norm ratio, and
  the held-out pretraining loss each validation (the "alignment tax").
- :class:`SampleLogger`: a table of prompt / response / reward / KL every N rollouts.

The sandbox's gold-score callbacks live with the sandbox: :mod:`lit_rlhf.sandbox.callbacks`.
"""

from lit_rlhf.callbacks.kl_tracker import KLTracker
from lit_rlhf.callbacks.pretrain_mix import PretrainMixLogger
from lit_rlhf.callbacks.samples import SampleLogger

__all__ = ["KLTracker", "PretrainMixLogger", "SampleLogger"]
