"""The embedded offline sandbox: a small deterministic world where the whole RLHF pipeline runs on a CPU.

It ships a pretraining corpus, demonstrations, PPO and evaluation prompts
(``DATA_DIR``), a tiny tokenizer (``TOKENIZER_DIR``) and a ~1M-parameter Llama config
(``BASE_CONFIG``), plus a gold labeler that scores any response, so a run can show whether
RLHF helped. Regenerate the assets with ``python -m lit_rlhf.sandbox.assets_build``.
"""

from lit_rlhf.sandbox.families import FAMILIES, FAMILY_BY_NAME, PROMPT_SEPARATOR, Family, parse_prompt
from lit_rlhf.sandbox.labeler import GoldLabeler
from lit_rlhf.sandbox.paths import BASE_CONFIG, DATA_DIR, SANDBOX_ASSETS, TOKENIZER_DIR
from lit_rlhf.sandbox.rewards import GoldReward, exact_answer
from lit_rlhf.sandbox.tokenizer import EOS_TOKEN, PAD_TOKEN, build_tokenizer
from lit_rlhf.sandbox.world import SANDBOX_FILES, generate_sandbox, write_sandbox_data

__all__ = [
    "BASE_CONFIG",
    "DATA_DIR",
    "EOS_TOKEN",
    "FAMILIES",
    "FAMILY_BY_NAME",
    "Family",
    "GoldLabeler",
    "GoldReward",
    "PAD_TOKEN",
    "PROMPT_SEPARATOR",
    "SANDBOX_ASSETS",
    "SANDBOX_FILES",
    "TOKENIZER_DIR",
    "build_tokenizer",
    "exact_answer",
    "generate_sandbox",
    "parse_prompt",
    "write_sandbox_data",
]
