"""PPO data: prompts to sample from, and the pretraining text of PPO-ptx riding beside them.

Every training batch is ``{"prompts": {...}, "ptx": {...}}`` from a ``CombinedLoader`` in
``mode="min_size"``: one rollout's prompts (left-padded) and the pretraining sequences of all
its optimizer steps (right-padded, loss on every token). The ptx stream cycles over its data
for as long as the prompts last, so the prompts alone decide the epoch length.

Exact resume: both loaders draw from :class:`RolloutSampler`, whose order is a pure function of
(seed, epoch, position) and whose epochs hold a whole number of rollouts. The data module alone keeps
the position (epoch, rollouts consumed) in its checkpoint state (:class:`~lit_rlhf.data.common.StageDataModule`);
on resume the samplers skip exactly those rollouts of that epoch, so the run continues with the batch
the interrupted run would have drawn next. Lightning alone restarts a plain DataLoader from the top of the epoch.

Lookahead (``max_staleness`` 1, asynchronous rollouts): each prompt batch also carries the NEXT batch of its epoch
as ``prompts["next"]``, so the module can have it sampled while it updates on this one; the last batch of an epoch
has none (the next epoch's order is not drawn yet). The position is still counted in whole batches.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, Optional

import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from lit_rlhf.data.batching import ResumableSampler, collate_examples, pad_sequences
from lit_rlhf.data.common import DropCounter, StageDataModule, resolve_tokenizer
from lit_rlhf.data.formats import DataFormat, convert_records
from lit_rlhf.data.records import DataSource, FieldMap, Record, get_str, read_records
from lit_rlhf.data.tokenize import Example, encode_text, fit_to_length, render_prompt
from lit_rlhf.errors import ConfigError, check_option


class RolloutSampler(ResumableSampler):
    """This rank's indices, a whole number of batches per epoch, in an order fixed by (seed, epoch).

    The indices form one endless stream: pass ``k`` over the data is a permutation seeded with
    ``seed + k``. A global batch is ``batch_size * num_replicas`` consecutive stream entries, of
    which each rank takes its own slice. Two kinds of epoch:

    - ``batches_per_epoch=None`` (prompts): epoch ``e`` is pass ``e``; the incomplete tail of each
      pass is dropped so every epoch holds exactly ``len(data) // global_batch`` rollouts.
    - ``batches_per_epoch=L`` (ptx): epoch ``e`` is the next ``L`` global batches of the stream,
      cycling through the data as often as needed.

    Like every :class:`ResumableSampler`, Lightning uses it as is under DDP instead of wrapping it.

    Args:
        num_items: Size of the dataset.
        batch_size: Indices per batch on this rank.
        num_replicas: Number of ranks.
        rank: This rank.
        seed: Seed of the permutations.
        batches_per_epoch: See above.
        lookahead: Yield ``(index, index of the same slot in the next batch of this epoch, or None)`` pairs.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        batches_per_epoch: Optional[int] = None,
        lookahead: bool = False,
    ):
        super().__init__(num_items, batch_size, seed=seed, num_replicas=num_replicas, rank=rank)
        self.batches_per_epoch_fixed, self.lookahead = batches_per_epoch, lookahead
        self.global_batch = batch_size * num_replicas
        self._permutation_cache: tuple[int, list[int]] = (-1, [])

    @property
    def batches_per_epoch(self) -> int:
        if self.batches_per_epoch_fixed is not None:
            return self.batches_per_epoch_fixed
        return self.num_items // self.global_batch

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def _stream(self, position: int) -> int:
        pass_index, offset = divmod(position, self.num_items)
        if self._permutation_cache[0] != pass_index:
            generator = torch.Generator().manual_seed(self.seed + pass_index)
            self._permutation_cache = (pass_index, torch.randperm(self.num_items, generator=generator).tolist())
        return self._permutation_cache[1][offset]

    def __iter__(self):
        skip = self.batches_to_skip()
        if self.batches_per_epoch_fixed is None:
            start = self.epoch * self.num_items
        else:
            start = self.epoch * self.batches_per_epoch * self.global_batch
        for batch in range(skip, self.batches_per_epoch):
            first = start + batch * self.global_batch + self.rank * self.batch_size
            has_next = batch + 1 < self.batches_per_epoch
            for position in range(first, first + self.batch_size):
                index = self._stream(position)
                if self.lookahead:
                    yield index, self._stream(position + self.global_batch) if has_next else None
                else:
                    yield index


class LookaheadItems:
    """``items`` indexed by the pairs of a lookahead :class:`RolloutSampler`: ``(item, next item or None)``."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, pair: tuple[int, Optional[int]]) -> tuple:
        index, upcoming = pair
        return self.items[index], None if upcoming is None else self.items[upcoming]


def collate_prompts(prompts: list[tuple[list[int], dict]], pad_id: int) -> dict:
    """Left-padded ``input_ids`` and ``attention_mask``, so every prompt ends in the last column, and ``records``:
    each prompt's record fields (for rewards that read them, e.g. an ``answer``)."""
    input_ids, attention_mask = pad_sequences([ids for ids, _ in prompts], pad_id, side="left")
    return {"input_ids": input_ids, "attention_mask": attention_mask, "records": [fields for _, fields in prompts]}


def collate_prompts_ahead(pairs: list[tuple], pad_id: int) -> dict:
    """:func:`collate_prompts` of the pairs' first items, with their second items' batch as ``"next"`` (none at
    the end of an epoch)."""
    batch = collate_prompts([current for current, _ in pairs], pad_id)
    if all(upcoming is not None for _, upcoming in pairs):
        batch["next"] = collate_prompts([upcoming for _, upcoming in pairs], pad_id)
    return batch


def encode_prompts(
    records: list[Record], tokenizer, fields: FieldMap, max_length: int, truncation: str, counter: DropCounter
) -> list[tuple[list[int], dict]]:
    """Token ids of each prompt, with the ``truncation`` policy of :class:`PromptDataModule`, and its record's
    fields."""
    prompts = []
    for record in records:
        ids = tokenizer(render_prompt(tokenizer, record, fields), add_special_tokens=True)["input_ids"]
        fitted = fit_to_length(
            Example(ids, ids), max_length, truncation, record, counter, option="max_prompt_length", what="prompt"
        )
        if fitted is not None:
            prompts.append((fitted.input_ids, dict(record.data)))
    return prompts


def encode_texts(
    records: list[Record], tokenizer, fields: FieldMap, max_length: int, counter: DropCounter
) -> list[Example]:
    """Pretraining sequences (loss on every token), cut to their first ``max_length`` tokens."""
    examples = []
    for record in records:
        text = encode_text(tokenizer, get_str(record, fields, "text"))
        examples.append(fit_to_length(text, max_length, "right", record, counter, option="max_ptx_length", what="text"))
    return examples


class PromptDataModule(StageDataModule):
    """Prompts for PPO rollouts, pretraining text for PPO-ptx, and optional validation data.

    Each training batch holds ``rollout_batch_size / samples_per_prompt`` prompts and
    ``round(ptx_ratio * rollout_batch_size)`` pretraining sequences, which the module spreads over the rollout's
    optimizer steps. ``lit-rlhf fit`` links both sizes from ``model.init_args.batch`` (one source of truth, no
    YAML to keep in step); in Python pass the ``PPOModule``'s ``batch`` sizes.

    Args:
        prompts: Prompt records, ``{"prompt"}`` or ``{"messages"}`` (rendered with the chat template and its
            generation prompt): a .jsonl/.json/.parquet/.csv file or ``datasets.load_dataset`` keyword arguments.
        ptx_text: Pretraining records ``{"text"}`` or a .txt file (one example a line). Unset: plain PPO.
        val_prompts: Prompts whose sampled responses are scored each validation (reward and KL). Optional.
        val_text: Held-out pretraining text whose LM loss is measured each validation. Optional.
        tokenizer: Tokenizer directory. Default: the LightningModule's.
        fields: Field renames, canonical name -> name in your data, e.g. ``{"prompt": "question"}``.
        max_prompt_length: Longest prompt in tokens.
        truncation: Policy for longer prompts: ``left`` keeps their last ``max_prompt_length`` tokens (the end, with
            the chat template's generation prompt, is what the response continues), ``drop`` drops them, ``error``
            stops. Truncated and dropped prompts are counted and logged.
        on_invalid: Records that do not fit their public layout (e.g. an HH-RLHF transcript whose turns do not
            alternate): ``error`` stops with the file, record and field; ``drop`` skips them, counted by reason and
            logged.
        max_ptx_length: Longest pretraining sequence; longer texts keep their first tokens.
        ptx_ratio: Pretraining sequences per episode (paper 8); 0 loads no ptx data.
        val_batch_size: Validation batch size (prompts or text sequences).
        seed: Seed of the prompt and ptx order. Default: the run's ``seed_everything``.
        rollout_batch_size: Episodes per rollout per device (linked from ``model.init_args.batch.rollout_batch_size``).
        samples_per_prompt: Responses per prompt (linked from ``model.init_args.batch.samples_per_prompt``).
        max_staleness: 1: each batch also carries the next batch's prompts (``prompts["next"]``) for asynchronous
            rollouts (linked from ``model.init_args.batch.max_staleness``).
        format: Layout of the records: ``auto`` (detected from the first record, and printed), ``native``, or a
            public layout: ``hh_rlhf``, ``conversational``, ``ultrafeedback``, ``nectar``, ``alpaca``, ``sharegpt``
            for ``prompts`` and ``val_prompts``; any layout gives its prompts
            (:mod:`lit_rlhf.data.formats`).
    """

    def __init__(
        self,
        prompts: DataSource,
        ptx_text: Optional[DataSource] = None,
        val_prompts: Optional[DataSource] = None,
        val_text: Optional[DataSource] = None,
        tokenizer: Optional[str] = None,
        fields: Optional[dict[str, str]] = None,
        max_prompt_length: int = 512,
        truncation: Literal["left", "drop", "error"] = "left",
        on_invalid: Literal["error", "drop"] = "error",
        max_ptx_length: int = 512,
        ptx_ratio: float = 8.0,
        val_batch_size: int = 32,
        seed: Optional[int] = None,
        format: DataFormat = "auto",
        rollout_batch_size: Optional[int] = None,
        samples_per_prompt: int = 1,
        max_staleness: int = 0,
    ):
        super().__init__(tokenizer, fields, seed)
        self.train_prompts: list[tuple[list[int], dict]] = []
        self.ptx_examples: list[Example] = []
        self.val_prompts: list[tuple[list[int], dict]] = []
        self.val_texts: list[Example] = []

    def setup(self, stage: str) -> None:
        if self.train_prompts:
            return
        hp = self.hparams
        self.tokenizer = resolve_tokenizer(self, self.tokenizer_source)
        for split, source in (("train", hp.prompts), ("val", hp.val_prompts)):
            if source is not None:
                counter = DropCounter("PPO prompts")
                records, fields = convert_records(
                    read_records(source),
                    hp.format,
                    "prompts",
                    self.fields,
                    self.tokenizer,
                    on_invalid=hp.on_invalid,
                    counter=counter,
                )
                encoded = encode_prompts(records, self.tokenizer, fields, hp.max_prompt_length, hp.truncation, counter)
                counter.report(split, len(encoded))
                setattr(self, f"{split}_prompts" if split == "train" else "val_prompts", encoded)
        for attribute, source in (
            ("ptx_examples", hp.ptx_text if hp.ptx_ratio > 0 else None),
            ("val_texts", hp.val_text),
        ):
            if source is not None:
                counter = DropCounter("PPO ptx text")
                examples = encode_texts(read_records(source), self.tokenizer, self.fields, hp.max_ptx_length, counter)
                counter.report("train" if attribute == "ptx_examples" else "val", len(examples))
                setattr(self, attribute, examples)
        if not self.train_prompts:
            raise ConfigError(f"no prompts left in {hp.prompts} after applying truncation={hp.truncation!r}")

    def rollout_sizes(self) -> tuple[int, int]:
        """(prompts, episodes) per rollout per device."""
        episodes, samples = self.hparams.rollout_batch_size, self.hparams.samples_per_prompt
        if episodes is None:
            raise ConfigError(
                "PromptDataModule needs rollout_batch_size (and samples_per_prompt): lit-rlhf fit links "
                "them from model.init_args.batch; in Python pass the PPOModule's batch sizes"
            )
        check_option("rollout_batch_size", episodes, min=1, integer=True)
        check_option("samples_per_prompt", samples, min=1, integer=True)
        if episodes % samples:
            raise ConfigError(f"rollout_batch_size must be a multiple of samples_per_prompt ({episodes}, {samples})")
        return episodes // samples, episodes

    def train_dataloader(self) -> CombinedLoader:
        hp, trainer = self.hparams, self.trainer
        prompts_per_rollout, episodes = self.rollout_sizes()
        replicas, rank = trainer.world_size, trainer.global_rank
        check_option("max_staleness", hp.max_staleness, min=0, max=1, integer=True)
        ahead = hp.max_staleness > 0
        prompt_sampler = RolloutSampler(
            len(self.train_prompts),
            prompts_per_rollout,
            num_replicas=replicas,
            rank=rank,
            seed=hp.seed,
            lookahead=ahead,
        )
        if prompt_sampler.batches_per_epoch == 0:
            raise ConfigError(
                f"{len(self.train_prompts)} prompts cannot fill one rollout of {prompts_per_rollout} prompts on each "
                f"of {replicas} device(s); lower model.batch.rollout_batch_size or add prompts"
            )
        items, collate = (
            (LookaheadItems(self.train_prompts), collate_prompts_ahead)
            if ahead
            else (self.train_prompts, collate_prompts)
        )
        loaders = {"prompts": self._loader(items, prompt_sampler, prompts_per_rollout, collate)}
        if self.ptx_examples:
            ptx_batch = max(1, round(hp.ptx_ratio * episodes))
            ptx_sampler = RolloutSampler(
                len(self.ptx_examples),
                ptx_batch,
                num_replicas=replicas,
                rank=rank,
                seed=hp.seed + 1,
                batches_per_epoch=prompt_sampler.batches_per_epoch,
            )
            loaders["ptx"] = self._loader(self.ptx_examples, ptx_sampler, ptx_batch, collate_examples)
        return CombinedLoader(loaders, mode="min_size")

    def val_dataloader(self) -> list[DataLoader]:
        loaders = []
        if self.val_texts:
            loaders.append(self._loader(self.val_texts, None, self.hparams.val_batch_size, collate_examples))
        if self.val_prompts:
            loaders.append(self._loader(self.val_prompts, None, self.hparams.val_batch_size, collate_prompts))
        return loaders

    def _loader(self, items: list, sampler: Optional[RolloutSampler], batch_size: int, collate) -> DataLoader:
        # num_workers=0 on purpose: data is pre-tokenised, and the sampler must read its epoch lazily.
        collate = partial(collate, pad_id=self.tokenizer.pad_token_id)
        if sampler is None:
            return self.eval_loader(items, batch_size, collate)
        # The loaders' position goes into the data module's checkpoint state: the one place a resume reads it from.
        return self.resumable_loader(
            "ptx" if sampler.batches_per_epoch_fixed is not None else "prompts", items, batch_size, collate, sampler
        )
