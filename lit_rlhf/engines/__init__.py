"""Rollout generation engines, selected in YAML (``PPOModule(engine=...)``).

- :class:`~lit_rlhf.engines.hf.HFEngine` (default): Hugging Face ``generate`` on the training model itself
  (KV cache; sharded weights gathered once per call), recording each sampled token's log-prob and the
  entropy while sampling.
- :class:`~lit_rlhf.engines.hf_worker.HFWorkerEngine`: Hugging Face ``generate`` in a worker process with its own
  weights and threads, for asynchronous rollouts (:mod:`lit_rlhf.engines.async_rollouts`) without vLLM.
- :class:`~lit_rlhf.engines.vllm.VLLMEngine`: vLLM in each training process, the policy's weights loaded into it
  after every rollout's updates; PPO scores its tokens with the trainer and logs the mismatch
  (:mod:`lit_rlhf.engines.correction`). Not imported here: vLLM is optional (``configs/engine/vllm.yaml``).
"""

from lit_rlhf.engines.base import RolloutEngine, SamplingSettings
from lit_rlhf.engines.hf import HFEngine, SampledTokenLogprobs, hf_generate
from lit_rlhf.engines.hf_worker import HFWorkerEngine

__all__ = ["HFEngine", "HFWorkerEngine", "RolloutEngine", "SamplingSettings", "SampledTokenLogprobs", "hf_generate"]
