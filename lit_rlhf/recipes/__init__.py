"""Recipes: whole chains of stages (SFT -> RM -> PPO -> evaluation) on real data, each stage a child ``lit-rlhf``
command whose wall time and peak memory are recorded (:mod:`lit_rlhf.recipes.stages`)."""
