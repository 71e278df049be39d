"""``lit-rlhf evaluate``: did RLHF help? Win rates with intervals, score against KL, lengths and the alignment tax of
named policies, each judged by reward components, against a reference policy (docs/evaluate.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from lit_rlhf.data.formats import DataFormat
from lit_rlhf.data.records import DataSource, FieldMap, get_str, read_records
from lit_rlhf.engines import RolloutEngine
from lit_rlhf.engines.base import SamplingSettings
from lit_rlhf.errors import ConfigError, check_option
from lit_rlhf.rewards import Reward, RewardContext

DEFAULT_SAMPLING = SamplingSettings(max_new_tokens=48)


def check_request(
    policies: Mapping[str, str], reference: str, prompts: DataSource, judges: Sequence[Reward]
) -> list[Any]:
    """The refusals that need no model: policies and prompts that do not exist, a reference that is not a policy,
    judges without the model they need or with the same name. Returns the prompt records."""
    from lit_rlhf.models.sources import check_local_source, resolve_source

    if not policies:
        raise ConfigError("policies: name at least one policy (name: model source)")
    if reference not in policies:
        raise ConfigError(f"reference '{reference}' is not one of the policies ({', '.join(policies)})")
    for name, source in policies.items():
        check_local_source(resolve_source(source), f"policies.{name}")
    names = [judge.name for judge in judges]
    for index, judge in enumerate(judges):
        if judge.uses_reward_model():
            raise ConfigError(
                f"judges[{index}] ({type(judge).__name__} '{judge.name}') needs a model: set its init_args.model to "
                "a reward model directory (evaluate has no module reward_model to default to)"
            )
        if names.count(judge.name) > 1:
            raise ConfigError(f"judges: two judges are named '{judge.name}'; give each its own init_args.name")
    return read_records(prompts)


def check_tokenizers(policies: Mapping[str, str]):
    """The first policy's tokenizer (left padding), after refusing policies whose tokenizers disagree with it: the
    judges read every policy's token ids as they are."""
    from lit_rlhf.models.loading import load_tokenizer, tokenizers_agree

    (first, first_source), *others = policies.items()
    tokenizer = load_tokenizer(first_source, padding_side="left")
    for name, source in others:
        if not tokenizers_agree(tokenizer, load_tokenizer(source)):
            raise ConfigError(
                f"policies.{name} '{source}' uses a different tokenizer than policies.{first} '{first_source}' "
                "(vocabulary or eos differ); the judges read every policy's token ids as they are"
            )
    return tokenizer


def evaluate(
    policies: dict[str, str],
    reference: str,
    prompts: DataSource,
    judges: Optional[list[Reward]] = None,
    num_prompts: Optional[int] = None,
    samples_per_prompt: int = 4,
    sampling: SamplingSettings = DEFAULT_SAMPLING,
    text: Optional[DataSource] = None,
    num_texts: Optional[int] = None,
    by: Optional[str] = None,
    out: str = "runs/evaluate",
    seed: int = 0,
    bootstrap_samples: int = 1000,
    tie_tolerance: float = 0.0,
    engine: Optional[RolloutEngine] = None,
    batch_size: int = 64,
    format: DataFormat = "auto",
    fields: Optional[dict[str, str]] = None,
    device: Optional[str] = None,
    wandb: bool = False,
) -> Path:
    """Judge named policies against a reference: win rates with intervals, scores, KL, lengths, held-out loss.

    Samples every policy on held-out prompts, scores every sample with every judge, and writes samples.jsonl,
    results.json, report.md, pairs.jsonl (blind side-by-side items for ``lit-rlhf label serve --pairs``) and PNG
    plots to ``out`` (docs/evaluate.md).

    Args:
        policies: Policies by name, in report order: any model source (save_pretrained directory, .gguf file,
            ``pkg:<package>/<file>``, hub id). ``--policies.NAME SRC`` adds or replaces one.
        reference: The policy the others are compared with and the KL is measured to (e.g. ``sft``).
        prompts: Held-out prompts in any layout the PPO data module reads (a file or datasets arguments).
        judges: Reward components (``lit_rlhf.rewards.RewardModelScore`` with its ``model``, ``FunctionReward``,
            ``lit_rlhf.sandbox.GoldReward``), each reported on its own under its ``name``.
        num_prompts: Use the first this many prompts. Unset: all.
        samples_per_prompt: Responses sampled per prompt and policy.
        sampling: Sampling settings, as PPO's (max_new_tokens, temperature, top_p; temperature 0 is greedy).
        text: Held-out text ({"text"} records or a .txt file) whose next-token loss each policy reports (the
            alignment tax). Unset: none.
        num_texts: Use the first this many texts. Unset: all.
        by: A prompt-record field to break every number down by (e.g. ``family``, ``category``).
        out: Output directory.
        seed: Seed of the sampler (every policy is sampled with it), of the bootstrap and of the pairs' sides.
        bootstrap_samples: Bootstrap resamples of the prompts for every interval.
        tie_tolerance: Score differences up to this count as ties (half a win).
        engine: How responses are sampled, as in PPO (``class_path: lit_rlhf.engines.vllm.VLLMEngine`` where vLLM is
            installed). Default: the Hugging Face engine.
        batch_size: Sequences per generate call and texts per loss batch.
        format: Layout of the prompt records: ``auto`` (detected) or one the PPO data module names.
        fields: Field renames of the prompt records, canonical name -> name in your data.
        device: Device of the models. Default: cuda when available, else cpu.
        wandb: Also log the tables and plots to Weights & Biases (offline unless WANDB_MODE=online).
    """
    import torch

    from lit_rlhf.evaluate.metrics import results_from_samples
    from lit_rlhf.evaluate.plots import write_plots
    from lit_rlhf.evaluate.policies import evaluate_policies
    from lit_rlhf.evaluate.report import blind_pairs, headline, report_markdown, write_jsonl
    from lit_rlhf.evaluate.scoring import read_prompts

    started = time.perf_counter()
    judges = list(judges or [])
    for name, value, low in (
        ("num_prompts", num_prompts, 1),
        ("samples_per_prompt", samples_per_prompt, 1),
        ("num_texts", num_texts, 1),
        ("bootstrap_samples", bootstrap_samples, 1),
        ("batch_size", batch_size, 1),
    ):
        check_option(name, value, min=low, integer=True)
    check_option("tie_tolerance", tie_tolerance, min=0)
    check_request(policies, reference, prompts, judges)
    texts = [get_str(r, FieldMap(), "text") for r in read_records(text)[:num_texts]] if text is not None else []
    tokenizer = check_tokenizers(policies)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    for judge in judges:  # a reward-model judge refuses a tokenizer that is not the policies'
        judge.build(RewardContext(tokenizer=tokenizer, micro_batch_size=batch_size))
        judge.to(device)
    eval_prompts = read_prompts(prompts, tokenizer, num_prompts=num_prompts, format=format, fields=fields)
    rows, heldout = evaluate_policies(
        policies,
        reference,
        eval_prompts,
        judges,
        settings=sampling,
        samples_per_prompt=samples_per_prompt,
        seed=seed,
        engine=engine,
        batch_size=batch_size,
        by=by,
        texts=texts,
        device=device,
    )
    judge_names = [judge.name for judge in judges]
    numbers = results_from_samples(
        rows,
        reference=reference,
        judges=judge_names,
        resamples=bootstrap_samples,
        seed=seed,
        tie_tolerance=tie_tolerance,
    )
    for name, loss in heldout.items():
        numbers[name]["heldout_loss"] = loss
    results = {
        "reference": reference,
        "judges": judge_names,
        "by": by,
        "settings": {
            "policies": dict(policies),
            "prompts": len(eval_prompts.texts),
            "samples_per_prompt": samples_per_prompt,
            "sampling": asdict(sampling),
            "seed": seed,
            "bootstrap_samples": bootstrap_samples,
            "tie_tolerance": tie_tolerance,
            "texts": len(texts),
        },
        "policies": numbers,
        "wall_s": time.perf_counter() - started,
    }
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "samples.jsonl", rows)
    write_jsonl(root / "pairs.jsonl", blind_pairs(rows, reference, seed))
    plots = write_plots(results, rows, root)
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (root / "report.md").write_text(report_markdown(results, plots))
    if wandb:
        log_to_wandb(results, plots, root)
    print("\n" + headline(results) + f"\n\n[evaluate] {root / 'report.md'} ({results['wall_s']:.0f} s)", flush=True)
    return root / "report.md"


def log_to_wandb(results: dict[str, Any], plots: Sequence[Path], root: Path) -> None:
    """The win-rate table and the plots, as one Weights & Biases run."""
    import wandb

    rows = [
        [judge, name, *(numbers["win_rate"][judge][k] for k in ("value", "low", "high"))]
        + [numbers["length_controlled_win_rate"][judge]["value"], numbers["score"][judge]["value"], numbers["kl"]]
        for judge in results["judges"]
        for name, numbers in results["policies"].items()
    ]
    columns = ["judge", "policy", "win_rate", "low", "high", "length_controlled", "score", "kl"]
    run = wandb.init(project="lit-rlhf-evaluate", dir=str(root), config=results["settings"])
    try:
        run.log(
            {"evaluate/win_rates": wandb.Table(columns=columns, data=rows)}
            | {f"evaluate/{p.stem}": wandb.Image(str(p)) for p in plots}
        )
    finally:
        run.finish()


def main(argv: Optional[list[str]] = None) -> None:
    from jsonargparse import auto_cli

    auto_cli(evaluate, args=argv, as_positional=False, prog="lit-rlhf evaluate")
