"""``lit-rlhf recipe``: whole recipes on real data, from the base model to the evaluation report."""

from __future__ import annotations

from typing import Optional


def main(argv: Optional[list[str]] = None) -> None:
    from jsonargparse import auto_cli

    from lit_rlhf.recipes.hh_rlhf import run as hh_rlhf

    auto_cli(
        {"hh-rlhf": hh_rlhf},
        args=argv,
        as_positional=False,
        prog="lit-rlhf recipe",
        description="Whole recipes on real data: base -> SFT -> RM -> PPO -> evaluate, with each stage's cost.",
    )
