"""Rollout generation engines, selected in YAML (``PPOModule(engine=...)``).

- :class:`~lit_rlhf.engines.hf.HFEngine` (default): Hugging Face ``generate`` on the training model itself
  (KV cache; sharded weights gathered once per call), recording each sampled token's log-prob and the
  entropy while sampling.
"""

from lit_rlhf.engines.base import RolloutEngine, SamplingSettings
from lit_rlhf.engines.hf import HFEngine, SampledTokenLogprobs, hf_generate

__all__ = ["HFEngine", "RolloutEngine", "SamplingSettings", "SampledTokenLogprobs", "hf_generate"]
