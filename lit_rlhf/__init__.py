"""lit-rlhf: the InstructGPT recipe (SFT, K-wise reward model, PPO-ptx) as PyTorch Lightning modules."""

__version__ = "0.1.0"
