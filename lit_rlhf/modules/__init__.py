"""The stage modules: each reads top to bottom as one stage of the InstructGPT recipe."""

from lit_rlhf.modules.ppo import PPOModule
from lit_rlhf.modules.ppo_variants import FormatRewardPPOModule, GroupBaselinePPOModule
from lit_rlhf.modules.reward import RewardModule
from lit_rlhf.modules.sft import SFTModule

__all__ = ["PPOModule", "FormatRewardPPOModule", "GroupBaselinePPOModule", "RewardModule", "SFTModule"]
