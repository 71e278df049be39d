"""The sandbox world: deterministic prompts, demonstrations and pretraining text for the whole pipeline.

Everything is drawn from ``random.Random`` streams seeded by ``(seed, split name)``, so the same
seed gives byte-identical files, and the evaluation split does not change when a training
split is resized. Evaluation and validation instances are disjoint (by task instance, not only
by text) from the training instances; the two training splits (demonstrations and PPO prompts)
are drawn from the same remaining pool and may share instances, as InstructGPT's did.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lit_rlhf.sandbox.families import (
    FAMILIES,
    FAMILY_BY_NAME,
    Family,
    family_statement,
    general_statement,
    make_record,
)

# Share of pretraining lines that are family facts; the rest are general letter/number facts.
FAMILY_STATEMENT_SHARE = 0.8
# Share of demonstrations in which the labeler, after the correct answer, adds a little chatter
# (", the end"). Real demonstrations are imperfect in the same way: SFT imitates the habit, the gold
# labeler (like the paper's labelers judging outputs) prefers the bare answer, and a small reward
# model can learn that preference from comparisons, so RLHF has something real to fix. Above one
# half, so that the SFT policy's most likely (greedy) continuation after the answer is the chatter.
CHATTY_SHARE = 0.6
# Every phrase starts with the same token (","), so the choice "stop or chat" is one token decision.
CHATTER = (", the end", ", there you are", ", there you go")
# Draws allowed per record before a split is declared impossible (instance pool exhausted).
MAX_DRAWS_PER_RECORD = 2000

SANDBOX_FILES = (
    "pretrain.txt",
    "pretrain_heldout.txt",
    "sft_train.jsonl",
    "sft_val.jsonl",
    "prompts_train.jsonl",
    "prompts_eval.jsonl",
)


def split_rng(seed: int, split: str) -> random.Random:
    """A random stream for one split; string seeds are hashed stably, not with ``hash()``."""
    return random.Random(f"lit-rlhf-sandbox/{seed}/{split}")


def family_schedule(n: int, rng: random.Random) -> list[Family]:
    """``n`` families, balanced round-robin, in shuffled order."""
    schedule = [FAMILIES[i % len(FAMILIES)] for i in range(n)]
    rng.shuffle(schedule)
    return schedule


def draw_prompts(n: int, rng: random.Random, excluded_keys: set[tuple], split: str = "prompts") -> list[dict]:
    """Draw ``n`` prompt records with distinct instances, none of them in ``excluded_keys``.

    Raises:
        RuntimeError: If a family runs out of fresh instances.
    """
    seen: set[tuple] = set()
    records = []
    for family in family_schedule(n, rng):
        for _ in range(MAX_DRAWS_PER_RECORD):
            params = family.sample_params(rng)
            key = family.key(params)
            if key not in excluded_keys and key not in seen:
                break
        else:
            raise RuntimeError(
                f"split {split!r}: family {family.name!r} has no fresh instances left; ask for fewer records"
            )
        seen.add(key)
        records.append(make_record(family, params, rng.choice(family.templates)))
    return records


def record_key(record: dict) -> tuple:
    """The instance key of a prompt record (phrasing-independent)."""
    return FAMILY_BY_NAME[record["family"]].key(record)


def demonstration(record: dict, rng: random.Random) -> dict:
    """A labeler demonstration: the correct answer after one space, followed by chatter (one of
    ``CHATTER``) with probability ``CHATTY_SHARE``, plus the record's metadata."""
    chatter = rng.choice(CHATTER) if rng.random() < CHATTY_SHARE else ""
    return {"prompt": record["prompt"], "response": " " + str(record["answer"]) + chatter, **_metadata(record)}


def _demonstrations(records: list[dict], seed: int, split: str) -> list[dict]:
    """Demonstrations for one split; the chatter draws come from the split's own stream."""
    rng = split_rng(seed, split + "/chatter")
    return [demonstration(r, rng) for r in records]


def _metadata(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("prompt", "response")}


def pretraining_lines(n: int, rng: random.Random, excluded: set[str] = frozenset()) -> list[str]:
    """``n`` distinct plain-text facts of the world (no instruction format), none in ``excluded``."""
    lines: list[str] = []
    seen: set[str] = set(excluded)
    for _ in range(n * MAX_DRAWS_PER_RECORD):
        if len(lines) == n:
            return lines
        if rng.random() < FAMILY_STATEMENT_SHARE:
            line = family_statement(rng.choice(FAMILIES), rng)
        else:
            line = general_statement(rng)
        if line not in seen:
            seen.add(line)
            lines.append(line)
    raise RuntimeError(f"could not draw {n} distinct pretraining lines")


def generate_sandbox(
    seed: int = 0,
    n_pretrain: int = 4000,
    n_pretrain_heldout: int = 400,
    n_sft_train: int = 2000,
    n_sft_val: int = 200,
    n_prompts_train: int = 1000,
    n_prompts_eval: int = 200,
) -> dict[str, list]:
    """Generate every sandbox split in memory.

    Args:
        seed: World seed; the same seed always gives the same data.
        n_pretrain: Pretraining text lines.
        n_pretrain_heldout: Held-out pretraining lines, disjoint from ``n_pretrain``'s.
        n_sft_train: Training demonstrations.
        n_sft_val: Validation demonstrations (instances disjoint from training).
        n_prompts_train: PPO prompts (may share instances with the demonstrations).
        n_prompts_eval: Evaluation prompts (instances disjoint from all other splits).

    Returns:
        A dict from file name (see ``SANDBOX_FILES``) to a list of lines (``str``) or records.
    """
    prompts_eval = draw_prompts(n_prompts_eval, split_rng(seed, "prompts_eval"), set(), "prompts_eval")
    reserved = {record_key(r) for r in prompts_eval}
    sft_val = draw_prompts(n_sft_val, split_rng(seed, "sft_val"), reserved, "sft_val")
    reserved |= {record_key(r) for r in sft_val}
    sft_train = draw_prompts(n_sft_train, split_rng(seed, "sft_train"), reserved, "sft_train")
    prompts_train = draw_prompts(n_prompts_train, split_rng(seed, "prompts_train"), reserved, "prompts_train")
    pretrain = pretraining_lines(n_pretrain, split_rng(seed, "pretrain"))
    heldout = pretraining_lines(n_pretrain_heldout, split_rng(seed, "pretrain_heldout"), set(pretrain))
    return {
        "pretrain.txt": pretrain,
        "pretrain_heldout.txt": heldout,
        # Their own streams, so the chatter does not move any split's instances.
        "sft_train.jsonl": _demonstrations(sft_train, seed, "sft_train"),
        "sft_val.jsonl": _demonstrations(sft_val, seed, "sft_val"),
        "prompts_train.jsonl": prompts_train,
        "prompts_eval.jsonl": prompts_eval,
    }


def render_file(name: str, rows: list) -> str:
    """Serialise one split: text lines for ``.txt``, one JSON object per line for ``.jsonl``."""
    if name.endswith(".txt"):
        return "".join(line + "\n" for line in rows)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_sandbox_data(out_dir: str | Path, seed: int = 0, **sizes: int) -> dict[str, Path]:
    """Write the sandbox files (``SANDBOX_FILES``) into ``out_dir``.

    Args:
        out_dir: Target directory, created if missing.
        seed: World seed.
        **sizes: Split sizes forwarded to :func:`generate_sandbox` (``n_sft_train=...``).

    Returns:
        A dict from file name to the written path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, rows in generate_sandbox(seed=seed, **sizes).items():
        path = out / name
        # newline="" keeps "\n" on every platform, so the bytes do not depend on the OS.
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(render_file(name, rows))
        written[name] = path
    return written
