"""Rollout generation engines: how a policy's responses to a batch of prompts are sampled.

- :func:`~lit_rlhf.engines.hf.hf_generate`: Hugging Face ``generate`` on the training model itself
  (KV cache; sharded weights gathered once per call), recording each sampled token's log-prob and the
  entropy while sampling.
"""

from lit_rlhf.engines.hf import SamplingSettings, SampledTokenLogprobs, hf_generate

__all__ = ["SamplingSettings", "SampledTokenLogprobs", "hf_generate"]
