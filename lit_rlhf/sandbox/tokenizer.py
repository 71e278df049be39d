"""The sandbox tokenizer: a tiny BPE in which every letter and digit stays its own token.

Pre-tokenization splits on newlines, spaces (kept as a ``▁`` prefix, so text round-trips),
punctuation and single digits. BPE merges therefore only build whole template words
(``▁letters``, ``Answer``) and ``▁k``-style letter tokens; a spaced letter sequence ``k d a m``
is one token per letter and ``17`` is two digit tokens, which keeps reverse/sort/count/arithmetic
learnable for a tiny model.

Prompts end with ``"\\nAnswer:"`` and responses start with a space, so tokenizing prompt and
response separately gives the same tokens as tokenizing their concatenation.
"""

from __future__ import annotations

import string
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lit_rlhf.sandbox.families import PROMPT_SEPARATOR

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
SPACE_MARK = "\u2581"
DEFAULT_VOCAB_SIZE = 384
MODEL_MAX_LENGTH = 128

# One user turn is the instruction followed by the prompt separator; the assistant turn is one
# space, the answer and end-of-text. A system message is a line of its own. Rendering
# [user] with add_generation_prompt gives exactly a sandbox prompt record's text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}{{ message['content'] }}"
    + PROMPT_SEPARATOR
    + "{% elif message['role'] == 'assistant' %} {{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}{% endfor %}"
)


def initial_alphabet() -> list[str]:
    """Characters that always get a token: printable ASCII, newline and the space mark."""
    printable = [c for c in string.printable if c not in " \t\r\x0b\x0c"]
    return printable + [SPACE_MARK]


def build_raw_tokenizer(corpus_lines: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train the BPE ``tokenizers.Tokenizer`` on ``corpus_lines`` (deterministic for a corpus)."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="never"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE_MARK, prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=initial_alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus_lines), trainer=trainer)
    return tokenizer


def build_tokenizer(corpus_lines: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the sandbox tokenizer and wrap it for transformers, with special tokens and chat template.

    Args:
        corpus_lines: Text to learn merges from (pretraining lines, prompts, responses).
        vocab_size: Upper bound on the vocabulary (merges stop early on a small corpus).
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_raw_tokenizer(corpus_lines, vocab_size),
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
