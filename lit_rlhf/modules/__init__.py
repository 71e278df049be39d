"""The stage modules: each reads top to bottom as one stage of the InstructGPT recipe."""

from lit_rlhf.modules.reward import RewardModule
from lit_rlhf.modules.sft import SFTModule

__all__ = ["RewardModule", "SFTModule"]
