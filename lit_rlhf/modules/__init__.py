"""The stage modules: each reads top to bottom as one stage of the recipe, on the shared :class:`StageModule`."""

from lit_rlhf.modules.base import StageModule
from lit_rlhf.modules.dpo import DPOModule
from lit_rlhf.modules.ppo import PPOModule
from lit_rlhf.modules.reward import RewardModule
from lit_rlhf.modules.sft import SFTModule

__all__ = ["DPOModule", "PPOModule", "RewardModule", "SFTModule", "StageModule"]
