"""``lit-rlhf evaluate`` and the evaluation path it shares with the sandbox: sample policies on held-out prompts
(:mod:`~lit_rlhf.evaluate.scoring`, :mod:`~lit_rlhf.evaluate.policies`), score every sample with judges (reward
components) and its KL to a reference, and turn the sample rows into win rates with intervals
(:mod:`~lit_rlhf.evaluate.metrics`), tables (:mod:`~lit_rlhf.evaluate.report`) and plots
(:mod:`~lit_rlhf.evaluate.plots`)."""

from lit_rlhf.evaluate.metrics import results_from_samples
from lit_rlhf.evaluate.policies import evaluate_policies, sample_rows
from lit_rlhf.evaluate.scoring import EvalPrompts, PolicySamples, prompts_of, read_prompts, sample_and_score

__all__ = [
    "EvalPrompts",
    "PolicySamples",
    "evaluate_policies",
    "prompts_of",
    "read_prompts",
    "results_from_samples",
    "sample_and_score",
    "sample_rows",
]
