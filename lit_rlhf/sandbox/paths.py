"""Where the shipped sandbox assets live inside the installed package."""

from pathlib import Path

SANDBOX_ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = SANDBOX_ASSETS / "tokenizer"
BASE_CONFIG = SANDBOX_ASSETS / "base_config.json"
DATA_DIR = SANDBOX_ASSETS / "data"
#: The shipped "pretrained" base model, reproducible by ``lit-rlhf fit --config configs/sandbox/pretrain.yaml``.
BASE_MODEL_DIR = SANDBOX_ASSETS / "base_model"
