"""``lit-rlhf sandbox``: the offline sandbox's commands (run the pipeline, over-optimisation curves, label samples,
rebuild assets)."""

from __future__ import annotations

from typing import Optional


def main(argv: Optional[list[str]] = None) -> None:
    from jsonargparse import auto_cli

    from lit_rlhf.sandbox.assets_build import build_assets
    from lit_rlhf.sandbox.labeling import label_samples
    from lit_rlhf.sandbox.overopt import overopt
    from lit_rlhf.sandbox.pipeline import run

    auto_cli(
        {"run": run, "overopt": overopt, "label": label_samples, "build-assets": build_assets},
        args=argv,
        as_positional=False,
        prog="lit-rlhf sandbox",
        description=(
            "The offline sandbox: a small world with a gold labeler where the whole InstructGPT pipeline runs on a CPU."
        ),
    )
