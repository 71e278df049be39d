"""Instruction families of the sandbox world: how each task is drawn, phrased, answered and stated.

A family knows four things about one task instance (its ``params``, a flat dict of strings and
ints): the canonical answer, a key that identifies the instance regardless of phrasing (used to
keep evaluation prompts disjoint from training ones), several natural-looking instruction
templates, and a few plain-text statements of the same fact for the pretraining corpus. The
statements never use the instruction format, so a base model learns the facts and the
vocabulary but not how to follow an instruction.

Letter sequences are always written one letter per word (``"k d a m"``) so that every letter is
its own token for the sandbox tokenizer.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import Callable

PROMPT_SEPARATOR = "\nAnswer:"
"""Every prompt ends with this; the response follows after one space (``" m a d k"``)."""

LETTERS = string.ascii_lowercase

Params = dict[str, "str | int"]


@dataclass(frozen=True)
class Family:
    """One instruction family.

    Args:
        name: Family name stored in every record's ``"family"`` field.
        kind: ``"letters"`` (answer is a spaced letter sequence) or ``"number"`` (an integer);
            selects how the gold labeler gives partial credit.
        templates: Instruction phrasings; ``str.format`` fields are keys of ``params``.
        statements: Pretraining sentences; may also use ``{answer}``.
        sample_params: Draws the parameters of one instance.
        answer: Canonical answer text for some parameters.
        key: Phrasing-independent identity of an instance.
    """

    name: str
    kind: str
    templates: tuple[str, ...]
    statements: tuple[str, ...]
    sample_params: Callable[[random.Random], Params]
    answer: Callable[[Params], str]
    key: Callable[[Params], tuple]


def spaced(letters: list[str] | str) -> str:
    """Write a letter sequence one letter per word: ``"kdam" -> "k d a m"``."""
    return " ".join(letters)


def random_letters(rng: random.Random, min_len: int, max_len: int, alphabet: str = LETTERS) -> str:
    """Draw a spaced letter sequence whose length is uniform in ``[min_len, max_len]``."""
    length = rng.randint(min_len, max_len)
    return spaced([rng.choice(alphabet) for _ in range(length)])


def _letters_params(min_len: int, max_len: int) -> Callable[[random.Random], Params]:
    """Parameter sampler for the families that transform one letter sequence."""

    def sample(rng: random.Random) -> Params:
        return {"letters": random_letters(rng, min_len, max_len)}

    return sample


def _sample_count(rng: random.Random) -> Params:
    """A sequence over 2-3 distinct letters, so that the target letter occurs 0-6 times."""
    pool = rng.sample(LETTERS, rng.randint(2, 3))
    letters = random_letters(rng, 4, 7, alphabet="".join(pool))
    # One time in eight ask for a letter that is absent, so "0" is a possible answer.
    target = rng.choice([c for c in LETTERS if c not in pool]) if rng.random() < 0.125 else rng.choice(pool)
    return {"letters": letters, "target": target}


def _sample_arithmetic(rng: random.Random) -> Params:
    """``a plus b`` or ``a minus b`` with small non-negative integers and a non-negative result."""
    op = rng.choice(["plus", "minus"])
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if op == "minus" and b > a:
        a, b = b, a
    return {"a": a, "op": op, "b": b}


def _arithmetic_answer(params: Params) -> str:
    a, b = int(params["a"]), int(params["b"])
    return str(a + b if params["op"] == "plus" else a - b)


def _count_answer(params: Params) -> str:
    return str(str(params["letters"]).split().count(str(params["target"])))


FAMILIES: tuple[Family, ...] = (
    Family(
        name="reverse",
        kind="letters",
        templates=(
            "Reverse the letters: {letters}",
            "Write these letters backwards: {letters}",
            "What are the letters {letters} in reverse order?",
            "Spell {letters} from the end.",
        ),
        statements=(
            "the letters {letters} backwards are {answer}",
            "read from the end, {letters} becomes {answer}",
            "{answer} is {letters} in reverse",
        ),
        sample_params=_letters_params(3, 6),
        answer=lambda p: spaced(str(p["letters"]).split()[::-1]),
        key=lambda p: ("reverse", p["letters"]),
    ),
    Family(
        name="sort",
        kind="letters",
        templates=(
            "Sort the letters: {letters}",
            "Put these letters in alphabetical order: {letters}",
            "What are the letters {letters} sorted from a to z?",
        ),
        statements=(
            "in alphabetical order the letters {letters} are {answer}",
            "sorted from a to z, {letters} gives {answer}",
        ),
        sample_params=_letters_params(3, 5),
        answer=lambda p: spaced(sorted(str(p["letters"]).split())),
        key=lambda p: ("sort", p["letters"]),
    ),
    Family(
        name="uppercase",
        kind="letters",
        templates=(
            "Write in capitals: {letters}",
            "Make these letters uppercase: {letters}",
            "What are the letters {letters} in capital letters?",
        ),
        statements=(
            "the capitals of {letters} are {answer}",
            "in uppercase, {letters} is written {answer}",
        ),
        sample_params=_letters_params(3, 6),
        answer=lambda p: str(p["letters"]).upper(),
        key=lambda p: ("uppercase", p["letters"]),
    ),
    Family(
        name="count",
        kind="number",
        templates=(
            "How many times does {target} appear in: {letters}?",
            "Count the letter {target} in {letters}.",
            "How many {target} are there in {letters}?",
        ),
        statements=(
            "the letter {target} appears {answer} times in {letters}",
            "there are {answer} {target} in {letters}",
        ),
        sample_params=_sample_count,
        answer=_count_answer,
        key=lambda p: ("count", p["letters"], p["target"]),
    ),
    Family(
        name="arithmetic",
        kind="number",
        templates=(
            "What is {a} {op} {b}?",
            "Compute {a} {op} {b}.",
            "Calculate: {a} {op} {b}",
        ),
        statements=(
            "{a} {op} {b} equals {answer}",
            "{a} {op} {b} makes {answer}",
            "if you take {a} {op} {b} you get {answer}",
        ),
        sample_params=_sample_arithmetic,
        answer=_arithmetic_answer,
        key=lambda p: ("arithmetic", p["a"], p["op"], p["b"]),
    ),
)

FAMILY_BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}

# What each template field may match when a prompt is parsed back from its text.
_FIELD_PATTERNS = {
    "letters": r"(?P<letters>[a-z](?: [a-z])*)",
    "target": r"(?P<target>[a-z])",
    "a": r"(?P<a>\d+)",
    "b": r"(?P<b>\d+)",
    "op": r"(?P<op>plus|minus)",
}
_INT_FIELDS = ("a", "b")


def template_regex(template: str) -> re.Pattern[str]:
    """Compile a template into a regex whose named groups recover its fields."""
    pieces = re.split(r"\{(\w+)\}", template)
    # re.split alternates literal text and field names.
    parts = [re.escape(p) if i % 2 == 0 else _FIELD_PATTERNS[p] for i, p in enumerate(pieces)]
    return re.compile("".join(parts) + re.escape(PROMPT_SEPARATOR))


_PARSERS: tuple[tuple[Family, re.Pattern[str]], ...] = tuple(
    (family, template_regex(template)) for family in FAMILIES for template in family.templates
)


def make_record(family: Family, params: Params, template: str) -> dict:
    """Build a prompt record: prompt text, family, answer and the flat task parameters."""
    prompt = template.format(**params) + PROMPT_SEPARATOR
    return {"prompt": prompt, "family": family.name, "answer": family.answer(params), **params}


def parse_prompt(prompt: str) -> dict:
    """Recover a prompt record (family, answer, parameters) from prompt text alone.

    Raises:
        ValueError: If the text matches no template of any family.
    """
    for family, pattern in _PARSERS:
        match = pattern.fullmatch(prompt)
        if match:
            params: Params = {k: int(v) if k in _INT_FIELDS else v for k, v in match.groupdict().items()}
            return {"prompt": prompt, "family": family.name, "answer": family.answer(params), **params}
    raise ValueError(f"prompt matches no sandbox template: {prompt!r}")


def general_statement(rng: random.Random) -> str:
    """A fact about letters or numbers that belongs to no family (alphabet order, successors)."""
    choice = rng.randrange(4)
    if choice == 0:
        i = rng.randrange(len(LETTERS) - 1)
        return f"after {LETTERS[i]} comes {LETTERS[i + 1]}"
    if choice == 1:
        n = rng.randint(0, 40)
        return f"the number after {n} is {n + 1}"
    if choice == 2:
        c = rng.choice(LETTERS)
        return f"the capital of {c} is {c.upper()}"
    a, b = rng.sample(range(0, 41), 2)
    return f"{max(a, b)} is more than {min(a, b)}"


def family_statement(family: Family, rng: random.Random) -> str:
    """A pretraining sentence stating the answer of a fresh instance of ``family``."""
    params = family.sample_params(rng)
    template = rng.choice(family.statements)
    return template.format(answer=family.answer(params), **params)
