"""One DataModule per stage, and the one place that reads and validates records.

The names below load on first use, so ``lit_rlhf.data.records`` (plain Python) can be imported without the
data modules' torch, transformers and Lightning (the labeling app reads records, nothing else).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "RewardDataModule": "lit_rlhf.data.comparisons",
    "PromptDataModule": "lit_rlhf.data.prompts",
    "SFTDataModule": "lit_rlhf.data.sft",
    "DataSource": "lit_rlhf.data.records",
    "FieldMap": "lit_rlhf.data.records",
    "Record": "lit_rlhf.data.records",
    "RecordError": "lit_rlhf.data.records",
    "read_records": "lit_rlhf.data.records",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lit_rlhf.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
