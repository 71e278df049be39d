"""One DataModule per stage, and the one place that reads and validates records."""

from lit_rlhf.data.comparisons import RewardDataModule
from lit_rlhf.data.prompts import PromptDataModule
from lit_rlhf.data.records import DataSource, FieldMap, Record, RecordError, read_records
from lit_rlhf.data.sft import SFTDataModule

__all__ = ["PromptDataModule", "RewardDataModule", "DataSource", "FieldMap", "Record", "RecordError", "SFTDataModule", "read_records"]
