"""Reward-model data: ranked comparisons, batched so that all responses of a prompt stay together.

InstructGPT (section 3.5, eq. 1) treats all C(K, 2) comparisons of one prompt as ONE batch
element: the unit of this DataModule is a *group* (one prompt with its K ranked responses), a
batch is a list of groups, and the collated batch lays the responses out flat, group after group,
with the :class:`~lit_rlhf.algorithms.ComparisonPairs` that index into them. Each response is
forwarded exactly once per step, whatever K is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lit_rlhf.algorithms.ranking import comparison_pairs
from lit_rlhf.data.batching import pad_sequences
from lit_rlhf.data.common import DropCounter, StageDataModule, resolve_tokenizer, split_records
from lit_rlhf.data.comparison_records import ComparisonError, parse_comparison
from lit_rlhf.data.formats import DataFormat, convert_records
from lit_rlhf.data.records import DataSource, FieldMap, Record, get_messages, get_str, read_records
from lit_rlhf.data.tokenize import encode_prompt_response, fit_to_length, render_prompt
from lit_rlhf.errors import ConfigError


@dataclass(frozen=True)
class ComparisonGroup:
    """A tokenised comparison: one ``prompt + response + eos`` sequence per response, and its ranks."""

    sequences: list[list[int]]
    ranks: list[int]
    response_lengths: list[int] = field(default_factory=list)

    @property
    def padded_size(self) -> int:
        """Tokens the group occupies once padded: what length grouping balances."""
        return len(self.sequences) * max(len(s) for s in self.sequences)


# ----------------------------------------------------------------------------------------------
# Tokenisation


#: Why a record is dropped under ``truncation: left`` when trimming its whole prompt would still not fit a response.
RESPONSE_TOO_LONG = "response alone fills max_length (dropped: left truncation only trims the prompt)"


def response_fills_length(examples: list, max_length: int, truncation: str) -> bool:
    """Whether ``left`` truncation would have to cut into a response (plus eos) or leave no prompt token: it trims the
    prompt's start only, so such a record is dropped (counted and named) instead of silently losing its prompt."""
    return truncation == "left" and any(example.num_loss_tokens >= max_length for example in examples)


def encode_comparisons(
    records: list[Record],
    tokenizer: PreTrainedTokenizerBase,
    fields: FieldMap,
    *,
    max_length: int,
    truncation: str,
    on_invalid: str,
    counter: DropCounter,
) -> list[ComparisonGroup]:
    """Validate and tokenise comparison records; invalid ones raise, or with ``on_invalid='drop'`` are counted and
    skipped."""
    groups = []
    for record in records:
        try:
            comparison = parse_comparison(record, fields, tokenizer)
        except ComparisonError as e:
            if on_invalid == "error":
                raise
            counter.add(e.reason, record)
            continue
        # Drops are counted per record below: a group loses no single response (that could leave only ties).
        encoded = [encode_prompt_response(tokenizer, comparison.prompt, response) for response in comparison.responses]
        if response_fills_length(encoded, max_length, truncation):
            counter.add(RESPONSE_TOO_LONG, record)
            continue
        fitted = [
            fit_to_length(example, max_length, truncation, record, counter if truncation != "drop" else None)
            for example in encoded
        ]
        if any(example is None for example in fitted):
            counter.add("over max_length", record)
            continue
        # Response tokens (EOS included) at the end of each sequence: what DPO's sequence log-probs sum over.
        response_lengths = [example.num_loss_tokens for example in fitted]
        groups.append(ComparisonGroup([example.input_ids for example in fitted], comparison.ranks, response_lengths))
    return groups


def encode_demonstrations(
    records: list[Record],
    tokenizer: PreTrainedTokenizerBase,
    fields: FieldMap,
    *,
    max_length: int,
    truncation: str,
    counter: DropCounter,
) -> list[list[int]]:
    """Demonstrations (``{"prompt", "response"}`` or ``{"messages"}`` ending with the assistant) as the
    RM sees responses: rendered prompt + response + eos. Used to center the reward."""
    sequences = []
    for record in records:
        if fields("messages") in record.data:
            messages = get_messages(record, fields, must_end_with="assistant")
            prompt_record = Record({fields("messages"): messages[:-1]}, record.source, record.index)
            prompt, response = render_prompt(tokenizer, prompt_record, fields), messages[-1]["content"]
        elif fields("prompt") in record.data:
            prompt = render_prompt(tokenizer, record, fields)
            response = get_str(record, fields, "response")
        else:
            raise record.error(
                None,
                f"centering needs demonstrations: '{fields('prompt')}'+'{fields('response')}' or "
                f"'{fields('messages')}' (record has: {', '.join(sorted(record.data)) or 'none'})",
            )
        example = encode_prompt_response(tokenizer, prompt, response)
        if response_fills_length([example], max_length, truncation):
            counter.add(RESPONSE_TOO_LONG, record)
            continue
        example = fit_to_length(example, max_length, truncation, record, counter)
        if example is not None:
            sequences.append(example.input_ids)
    return sequences


# ----------------------------------------------------------------------------------------------
# Batching


def collate_groups(groups: list[ComparisonGroup], pad_id: int) -> dict:
    """Responses of all groups, flat and right-padded, plus the pairs that index into them.

    Returns:
        ``input_ids`` and ``attention_mask`` ``[N, T]`` (N = total responses), ``pairs``
        (:class:`ComparisonPairs`), ``group`` ``[N]``: the group of each response, and ``response_mask``
        ``[N, T]``: the response tokens (EOS included) of each sequence.
    """
    sequences = [s for g in groups for s in g.sequences]
    input_ids, attention_mask = pad_sequences(sequences, pad_id)
    group = torch.cat([torch.full((len(g.sequences),), i, dtype=torch.long) for i, g in enumerate(groups)])
    pairs = comparison_pairs([g.ranks for g in groups])
    lengths = torch.tensor([n for g in groups for n in (g.response_lengths or [0] * len(g.sequences))])
    ends = attention_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(input_ids.shape[1])
    response_mask = (positions >= ends - lengths[:, None]) & (positions < ends)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pairs": pairs,
        "group": group,
        "response_mask": response_mask,
    }


def collate_sequences(items: list[tuple[list[int], float]], pad_id: int) -> dict[str, Tensor]:
    """Demonstrations for centering: ``input_ids``, ``attention_mask`` and ``weight`` (0 for padding items)."""
    input_ids, attention_mask = pad_sequences([ids for ids, _ in items], pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "weight": torch.tensor([w for _, w in items])}


def rank_share(items: list, rank: int, world_size: int) -> list[tuple[object, float]]:
    """Rank ``rank``'s share of ``items`` as ``(item, weight)``: every rank gets the same count (short
    shares are padded with weight-0 repeats), so sharded forwards stay in lockstep."""
    share = [(item, 1.0) for item in items[rank::world_size]]
    size = math.ceil(len(items) / world_size)
    return share + [(items[0], 0.0)] * (size - len(share))


class RewardDataModule(StageDataModule):
    """Ranked comparisons for the reward model, batched by prompt (InstructGPT 3.5, C.2).

    Record formats (field names remappable with ``fields``): ``{"prompt", "responses": [best, ..., worst]}``
    with K >= 2 and optional ``"ranks"`` (one integer per response, lower is better; equal ranks are
    ties and yield no pair), or ``{"prompt", "chosen", "rejected"}``. The prompt may be chat messages
    (``messages``, or a list-valued ``prompt``), rendered with the tokenizer's chat template. Each
    response is scored as ``prompt + response + eos``.

    A batch is ``batch_size`` prompts with all their responses (K may differ between prompts); a
    prompt's responses always stay in one batch on one device.

    Args:
        train: Training comparisons: a .jsonl/.json/.parquet/.csv file, or ``datasets.load_dataset`` keyword arguments.
        val: Validation comparisons, in the same forms. Leave unset to hold out ``val_fraction`` of ``train`` instead.
        val_fraction: Fraction of ``train`` held out for validation when ``val`` is unset (0 = no validation).
        center_on: Demonstrations (``{"prompt", "response"}`` or ``{"messages"}``) on which the trained reward is
            centered to mean 0 (paper 3.5: the labeler demonstrations, i.e. the SFT training data). Unset: no centering.
        tokenizer: Tokenizer directory or hub id. Default: the LightningModule's tokenizer.
        fields: Field renames, canonical name -> name in your data, e.g. ``{"responses": "completions"}``.
            Canonical names: prompt, messages, responses, ranks, chosen, rejected, response (center_on).
        max_length: Longest prompt + response in tokens.
        truncation: Policy for longer sequences: ``left`` drops tokens from the start of the prompt (the
            response end, where the reward is read, is kept; a group with a response that alone fills ``max_length``
            is dropped, counted and named), ``drop`` drops the whole prompt group, ``error`` stops.
        on_invalid: Invalid records (K < 2, a repeated or empty response, bad ranks, only ties, missing fields):
            ``error`` stops with the file, record and field; ``drop`` skips them, counted by reason and logged.
        batch_size: Prompts per device per step (the paper counts RM batches in prompts); each brings all its K
            responses.
        group_by_length: Batch prompts of similar padded size together so little compute goes to padding.
        num_workers: DataLoader worker processes.
        seed: Seed for the validation split and the batch order. Default: the run's ``seed_everything``.
        format: Layout of the records: ``auto`` (detected from the first record, and printed), ``native``, or a
            public layout: ``hh_rlhf``, ``conversational``, ``ultrafeedback``, ``nectar``; ``center_on`` is always
            detected (:mod:`lit_rlhf.data.formats`).
    """

    def __init__(
        self,
        train: Optional[DataSource] = None,
        val: Optional[DataSource] = None,
        val_fraction: float = 0.0,
        center_on: Optional[DataSource] = None,
        tokenizer: Optional[str] = None,
        fields: Optional[dict[str, str]] = None,
        max_length: int = 1024,
        truncation: Literal["left", "drop", "error"] = "left",
        on_invalid: Literal["error", "drop"] = "error",
        batch_size: int = 8,
        group_by_length: bool = True,
        num_workers: int = 0,
        seed: Optional[int] = None,
        format: DataFormat = "auto",
    ):
        super().__init__(tokenizer, fields, seed)
        self.train_groups: list[ComparisonGroup] = []
        self.val_groups: list[ComparisonGroup] = []
        self.drop_counts: dict[str, int] = {}
        self._center_sequences: Optional[list[list[int]]] = None

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if self.train_groups if stage == "fit" else self.val_groups:
            return
        self.tokenizer = resolve_tokenizer(self, self.tokenizer_source)
        if stage != "fit" and hp.val is not None:  # validate a saved RM: the training data need not exist
            train_records, val_records = [], read_records(hp.val)
        else:
            if hp.train is None:
                raise ValueError("RewardDataModule needs `train` comparisons (or `val` for `lit-rlhf validate`)")
            train_records, val_records = split_records(hp.train, hp.val, hp.val_fraction, hp.seed)
        for split, records in (("train", train_records), ("val", val_records)):
            counter = DropCounter("RM")
            records, fields = convert_records(
                records,
                hp.format,
                "comparisons",
                self.fields,
                self.tokenizer,
                on_invalid=hp.on_invalid,
                counter=counter,
            )
            groups = encode_comparisons(
                records,
                self.tokenizer,
                fields,
                max_length=hp.max_length,
                truncation=hp.truncation,
                on_invalid=hp.on_invalid,
                counter=counter,
            )
            if records:
                self.drop_counts.update(counter.report(split, len(groups)))
            setattr(self, f"{split}_groups", groups)
        if stage == "fit" and not self.train_groups:
            raise ValueError(f"no training comparisons left in {hp.train} after dropping invalid ones")
        if val_records and not self.val_groups:  # training on without validation would hide it
            raise ConfigError(
                f"no validation comparisons left in {hp.val or hp.train} after truncation={hp.truncation!r} "
                f"and on_invalid={hp.on_invalid!r}"
            )
        if stage == "fit" and hp.center_on is not None:
            self._center_sequences = self._encode_center_on()  # read now: a bad file must not cost a whole training run
        if stage != "fit" and not self.val_groups:
            raise ValueError("no validation comparisons: set `val` (or `val_fraction`) on the data module")

    def _encode_center_on(self) -> list[list[int]]:
        """The ``center_on`` demonstrations, validated and tokenised."""
        hp = self.hparams
        counter = DropCounter("RM centering")
        records, fields = convert_records(read_records(hp.center_on), "auto", "sft", self.fields, self.tokenizer)
        sequences = encode_demonstrations(
            records, self.tokenizer, fields, max_length=hp.max_length, truncation=hp.truncation, counter=counter
        )
        counter.report("center_on", len(sequences))
        if not sequences:
            raise ValueError(f"no demonstrations left in center_on={hp.center_on}")
        return sequences

    def _collate(self):
        return partial(collate_groups, pad_id=self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        sizes = [g.padded_size for g in self.train_groups] if hp.group_by_length else None
        return self.train_loader(
            self.train_groups, hp.batch_size, self._collate(), lengths=sizes, num_workers=hp.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        return self.eval_loader(self.val_groups, hp.batch_size, self._collate(), num_workers=hp.num_workers)

    def center_dataloader(self, rank: int = 0, world_size: int = 1) -> Optional[DataLoader]:
        """This rank's share of the ``center_on`` demonstrations (None when unset). Items carry a
        ``weight`` (0 for padding) so the bias is an exact mean over the data on any number of ranks."""
        hp = self.hparams
        if hp.center_on is None:
            return None
        if self.tokenizer is None:
            self.tokenizer = resolve_tokenizer(self, self.tokenizer_source)
        # Read and checked in setup already, so a bad file stops the run before training.
        sequences = self._center_sequences if self._center_sequences is not None else self._encode_center_on()
        share = rank_share(sequences, rank, world_size)
        # No gradients are kept while centering, so a batch holds about as many sequences as a training batch.
        collate = partial(collate_sequences, pad_id=self.tokenizer.pad_token_id)
        return DataLoader(share, batch_size=hp.batch_size * 4, collate_fn=collate)
