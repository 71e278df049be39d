"""SFT data: demonstrations (and pretraining text) as token ids with loss masks."""

from __future__ import annotations

from functools import partial
from typing import Literal, Optional

from torch.utils.data import DataLoader

from lit_rlhf.data.batching import collate_examples, collate_packed, pack_examples
from lit_rlhf.data.common import DropCounter, StageDataModule, resolve_tokenizer, split_records
from lit_rlhf.data.formats import DataFormat, convert_records
from lit_rlhf.data.records import DataSource, FieldMap, Record
from lit_rlhf.data.tokenize import Example, encode_sft_record, fit_to_length
from lit_rlhf.errors import ConfigError


def encode_sft_records(
    records: list[Record],
    tokenizer,
    fields: FieldMap,
    max_length: int,
    truncation: str,
    counter: DropCounter,
) -> list[Example]:
    """Encode and apply the truncation policy; see :class:`SFTDataModule` ``truncation``."""
    examples = []
    for record in records:
        example = fit_to_length(
            encode_sft_record(tokenizer, record, fields), max_length, truncation, record, counter, what="example"
        )
        if example is None:
            continue
        if example.num_loss_tokens == 0:
            counter.add("no loss tokens left after truncation")
            continue
        examples.append(example)
    return examples


class SFTDataModule(StageDataModule):
    """Demonstrations for supervised fine-tuning, or plain text for pretraining (the ptx data).

    Record formats (field names remappable with ``fields``): ``{"prompt", "response"}`` with loss on
    the response; ``{"messages": [...]}`` rendered with the tokenizer's chat template with loss on
    assistant turns; ``{"text"}`` (and ``.txt`` lines) with loss on every token.

    Args:
        train: Training data: a .jsonl/.json/.parquet/.csv/.txt file, or ``datasets.load_dataset`` keyword arguments.
        val: Validation data, in the same forms. Leave unset to hold out ``val_fraction`` of ``train`` instead.
        val_fraction: Fraction of ``train`` held out for validation when ``val`` is unset (0 = no validation).
        tokenizer: Tokenizer directory or hub id. Default: the LightningModule's tokenizer.
        fields: Field renames, canonical name -> name in your data, e.g. ``{"response": "answer"}``.
        max_length: Longest sequence in tokens.
        truncation: Policy for longer examples: ``right`` keeps the first ``max_length`` tokens (the end
            of the response is cut; examples left with no response tokens are dropped), ``drop`` drops
            them, ``error`` stops. Truncated and dropped examples are counted and logged.
        on_invalid: Records that do not fit their public layout (e.g. an HH-RLHF transcript whose turns do not
            alternate): ``error`` stops with the file, record and field; ``drop`` skips them, counted by reason and
            logged.
        batch_size: Sequences (or packed rows) per device per step (the micro-batch).
        group_by_length: Batch examples of similar length together so little compute goes to padding.
        pack: Pack several short examples into each row of ``max_length`` tokens (positions restart per
            example and examples do not attend to each other).
        num_workers: DataLoader worker processes.
        seed: Seed for the validation split and the batch order. Default: the run's ``seed_everything``.
        format: Layout of the records: ``auto`` (detected from the first record, and printed), ``native``, or a
            public layout: ``hh_rlhf``, ``conversational``, ``ultrafeedback``, ``nectar`` (their best response),
            ``alpaca``, ``sharegpt`` (:mod:`lit_rlhf.data.formats`).
    """

    def __init__(
        self,
        train: DataSource,
        val: Optional[DataSource] = None,
        val_fraction: float = 0.0,
        tokenizer: Optional[str] = None,
        fields: Optional[dict[str, str]] = None,
        max_length: int = 1024,
        truncation: Literal["right", "drop", "error"] = "right",
        on_invalid: Literal["error", "drop"] = "error",
        batch_size: int = 8,
        group_by_length: bool = True,
        pack: bool = False,
        num_workers: int = 0,
        seed: Optional[int] = None,
        format: DataFormat = "auto",
    ):
        super().__init__(tokenizer, fields, seed)
        self.train_rows: list = []
        self.val_rows: list = []

    def setup(self, stage: str) -> None:
        if self.train_rows:
            return
        hp = self.hparams
        self.tokenizer = resolve_tokenizer(self, self.tokenizer_source)
        train_records, val_records = split_records(hp.train, hp.val, hp.val_fraction, hp.seed)
        for split, records in (("train", train_records), ("val", val_records)):
            counter = DropCounter("SFT")
            records, fields = convert_records(
                records, hp.format, "sft", self.fields, self.tokenizer, on_invalid=hp.on_invalid, counter=counter
            )
            examples = encode_sft_records(records, self.tokenizer, fields, hp.max_length, hp.truncation, counter)
            counter.report(split, len(examples))
            rows = pack_examples(examples, hp.max_length) if hp.pack else examples
            setattr(self, f"{split}_rows", rows)
        if not self.train_rows:
            raise ConfigError(f"no training examples left in {hp.train} after applying truncation={hp.truncation!r}")
        if val_records and not self.val_rows:  # training on without validation would hide it
            raise ConfigError(
                f"no validation examples left in {hp.val or hp.train} after applying truncation={hp.truncation!r} "
                f"with max_length={hp.max_length}; raise max_length or fix the validation data"
            )

    def _collate(self):
        collate = collate_packed if self.hparams.pack else collate_examples
        return partial(collate, pad_id=self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        lengths = [len(e.input_ids) for e in self.train_rows] if hp.group_by_length and not hp.pack else None
        return self.train_loader(
            self.train_rows, hp.batch_size, self._collate(), lengths=lengths, num_workers=hp.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(
            self.val_rows, self.hparams.batch_size, self._collate(), num_workers=self.hparams.num_workers
        )
