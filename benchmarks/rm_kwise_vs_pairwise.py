"""Reward-model training throughput: InstructGPT's K-wise batches against flat pairwise batches.

Both paths train the same tiny random Llama reward model on the same ranked groups (K responses per
prompt, all C(K, 2) pairs labeled) with the same number of sequences per step:

- ``k-wise``: a step holds whole prompts; each response is forwarded once and the loss covers all
  pairs of each prompt (``kwise_ranking_loss``, eq. 1);
- ``pairwise``: the groups' pairs are shuffled into one flat dataset and each step forwards the
  chosen and the rejected response of every pair (the layout of TRL's RewardTrainer).

A comparison costs 2 forwards pairwise and 2 / (K - 1) forwards K-wise, so at equal sequences per
second the K-wise path processes (K - 1)x more comparisons per second.

    python benchmarks/rm_kwise_vs_pairwise.py            # about 1-2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, LlamaConfig

from lit_rlhf.algorithms.ranking import comparison_pairs, kwise_ranking_loss
from lit_rlhf.models.heads import sequence_rewards


def tiny_reward_model(vocab_size: int, seq_len: int) -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=seq_len,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).train()


def ranked_groups(num_groups: int, k: int, seq_len: int, vocab_size: int) -> torch.Tensor:
    """Random token ids ``[G, K, T]``; response j of a group has rank j (best first)."""
    generator = torch.Generator().manual_seed(k)
    return torch.randint(3, vocab_size, (num_groups, k, seq_len), generator=generator)


def train_step(model, optimizer, input_ids: torch.Tensor, loss_fn) -> None:
    mask = torch.ones_like(input_ids)
    loss = loss_fn(sequence_rewards(model, input_ids, mask, centered=False))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def kwise_steps(groups: torch.Tensor, prompts_per_step: int):
    """Steps of whole prompts: (input_ids [P*K, T], loss_fn, comparisons in the step)."""
    k = groups.shape[1]
    pairs = comparison_pairs([list(range(k))] * prompts_per_step)
    for start in range(0, groups.shape[0] - prompts_per_step + 1, prompts_per_step):
        batch = groups[start : start + prompts_per_step].flatten(0, 1)
        yield batch, lambda rewards: kwise_ranking_loss(rewards, pairs), pairs.num_pairs


def pairwise_steps(groups: torch.Tensor, pairs_per_step: int):
    """Steps of shuffled flat pairs, chosen and rejected both forwarded: (input_ids [2B, T], loss_fn, B)."""
    num_groups, k, seq_len = groups.shape
    pairs = comparison_pairs([list(range(k))] * num_groups)
    flat = groups.reshape(num_groups * k, seq_len)
    order = torch.randperm(pairs.num_pairs, generator=torch.Generator().manual_seed(0))

    def loss_fn(rewards: torch.Tensor) -> torch.Tensor:
        chosen, rejected = rewards.chunk(2)
        return -F.logsigmoid(chosen - rejected).mean()

    for start in range(0, len(order) - pairs_per_step + 1, pairs_per_step):
        chosen_rejected = order[start : start + pairs_per_step]
        batch = torch.cat([flat[pairs.winner[chosen_rejected]], flat[pairs.loser[chosen_rejected]]])
        yield batch, loss_fn, pairs_per_step


class TimedPath:
    """One training path: its own model, optimizer and endless steps, timed step by step."""

    def __init__(self, steps: list, vocab_size: int, seq_len: int):
        self.steps = itertools.cycle(steps)
        self.model = tiny_reward_model(vocab_size, seq_len)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95))
        self.step_seconds: list[float] = []
        self.comparisons_per_step = self.sequences_per_step = 0

    def step(self, measured: bool) -> None:
        input_ids, loss_fn, num_comparisons = next(self.steps)
        started = time.perf_counter()
        train_step(self.model, self.optimizer, input_ids, loss_fn)
        if measured:
            self.step_seconds.append(time.perf_counter() - started)
            self.comparisons_per_step, self.sequences_per_step = num_comparisons, input_ids.shape[0]

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    def rates(self) -> tuple[float, float]:
        """(comparisons/s, sequences/s) from the median step time: robust to load from other processes."""
        step_time = statistics.median(self.step_seconds)
        return self.comparisons_per_step / step_time, self.sequences_per_step / step_time


def measure_interleaved(kwise: TimedPath, pairwise: TimedPath, seconds: float, warmup_steps: int = 3) -> None:
    """Alternate single steps of the two paths (and which goes first), so load from other processes and
    cache effects hit both alike."""
    for i in itertools.count():
        measured = i >= warmup_steps
        for path in (kwise, pairwise) if i % 2 == 0 else (pairwise, kwise):
            path.step(measured)
        if min(kwise.seconds, pairwise.seconds) >= seconds:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 9], help="responses per prompt to compare")
    parser.add_argument("--sequences-per-step", type=int, default=36, help="sequences forwarded per step on both paths")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--groups", type=int, default=400, help="prompts in the data set of each K")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured training time per path and K")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocab_size = 256

    rows = []
    for k in args.ks:
        groups = ranked_groups(args.groups, k, args.seq_len, vocab_size)
        prompts_per_step = max(1, args.sequences_per_step // k)
        pairs_per_step = prompts_per_step * k // 2  # the same sequences per step as the K-wise path
        kwise = TimedPath(list(kwise_steps(groups, prompts_per_step)), vocab_size, args.seq_len)
        pairwise = TimedPath(list(pairwise_steps(groups, pairs_per_step)), vocab_size, args.seq_len)
        measure_interleaved(kwise, pairwise, args.seconds)
        kwise, pairwise = kwise.rates(), pairwise.rates()
        rows.append((k, prompts_per_step * k, math.comb(k, 2), kwise, pairwise))

    print(
        f"\nseq_len={args.seq_len}, threads={args.threads}, {args.seconds:.0f} s per path; median-step comparisons/s "
        "(sequences/s)"
    )
    print(
        f"{'K':>3} {'seqs/step':>9} {'pairs/prompt':>12} {'k-wise':>18} {'pairwise':>18} {'ratio':>6} {'ideal K-1':>9}"
    )
    for k, seqs, pairs_per_prompt, (kw_cmp, kw_seq), (pw_cmp, pw_seq) in rows:
        print(
            f"{k:>3} {seqs:>9} {pairs_per_prompt:>12} {kw_cmp:>9.0f} ({kw_seq:>5.0f}) {pw_cmp:>9.0f} ({pw_seq:>5.0f}) "
            f"{kw_cmp / pw_cmp:>6.2f} {k - 1:>9}"
        )


if __name__ == "__main__":
    main()
