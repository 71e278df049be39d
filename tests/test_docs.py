"""The documentation stays true to the code: every metric the code logs is in the glossary (docs/metrics.md), the
README stays a short front page with the quickstart markers CI reads, and every relative link resolves.

Static (ast + regex over the sources, no import of the library), so it runs in well under a second.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_rlhf"
GLOSSARY = ROOT / "docs" / "metrics.md"
README = ROOT / "README.md"

#: First path component of every logged metric name. A string literal of this shape anywhere in the library is
#: taken as a metric name (metric dictionaries are built in one place and logged in another, so looking only at
#: the ``self.log`` call would miss most of them).
METRIC_PREFIXES = ("train", "val", "rollout", "ptx", "perf", "engine", "probe", "kl", "gold", "center", "heldout")
METRIC_NAME = re.compile(rf"^(?:{'|'.join(METRIC_PREFIXES)})/[\w/{{}}.<>-]+$")
#: Logging calls: their first argument (``log``) or their dictionary's keys (``log_dict``, ``log_metrics``) are
#: metric names whatever their prefix.
LOG_CALLS = {"log": "arg", "log_dict": "keys", "log_metrics": "keys"}
#: Keys that are bookkeeping, not logged: per-key counts reduced across ranks and divided out before logging.
NOT_LOGGED = re.compile(r"/count$")
#: Per-token loss metrics (``TokenLoss.metrics``: dicts named ``metrics`` whose keys have no prefix) are logged by
#: PPOModule under ``train/<key>``.
TOKEN_LOSS_PREFIX = "train/"
#: A hole in an f-string (``f"rollout/reward/{name}"``) stands for any text.
HOLE = "\x00"


def _render(node: ast.AST, defaults: dict[str, str]) -> str | None:
    """A string constant as it is; an f-string with each hole as HOLE, except ``{self.<attr>}`` where the class's
    constructor gives ``<attr>`` a string default (``prefix: str = "probe"``), which is filled in."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif (
                isinstance(value, ast.FormattedValue)
                and isinstance(value.value, ast.Attribute)
                and isinstance(value.value.value, ast.Name)
                and value.value.value.id == "self"
                and value.value.attr in defaults
            ):
                parts.append(defaults[value.value.attr])
            else:
                parts.append(HOLE)
        return "".join(parts)
    return None


def _constructor_defaults(cls: ast.ClassDef) -> dict[str, str]:
    for item in cls.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            args = item.args.args + item.args.kwonlyargs
            defaults = (
                [None] * (len(item.args.args) - len(item.args.defaults)) + item.args.defaults + item.args.kw_defaults
            )
            return {
                a.arg: d.value
                for a, d in zip(args, defaults)
                if isinstance(d, ast.Constant) and isinstance(d.value, str)
            }
    return {}


def _dict_keys(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Dict):
        return [k for k in node.keys if k is not None]
    if isinstance(node, ast.DictComp):
        return [node.key]
    return []


def logged_names(source: str) -> set[str]:
    """Metric names (HOLE marks a part computed at run time) that one module's source logs."""
    tree = ast.parse(source)
    names: set[str] = set()

    def visit(node: ast.AST, defaults: dict[str, str]) -> None:
        if isinstance(node, ast.ClassDef):
            defaults = {**defaults, **_constructor_defaults(node)}
        candidates: list[tuple[ast.AST, bool]] = []  # (string node, certainly a metric name)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_CALLS:
            not_a_logger = isinstance(node.func.value, ast.Name) and node.func.value.id in {
                "logging",
                "logger",
                "math",
                "np",
                "torch",
            }
            progress_bar_only = any(
                k.arg == "logger" and isinstance(k.value, ast.Constant) and k.value.value is False
                for k in node.keywords
            )
            if not not_a_logger and not progress_bar_only and node.args:
                if LOG_CALLS[node.func.attr] == "arg":
                    candidates.append((node.args[0], True))
                else:
                    candidates += [(k, True) for k in _dict_keys(node.args[0])]
        token_loss_keys: list[ast.AST] = []
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "metrics" for t in node.targets):
            token_loss_keys += _dict_keys(node.value)
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Subscript)
            and isinstance(node.targets[0].value, ast.Name)
            and node.targets[0].value.id == "metrics"
        ):
            token_loss_keys.append(node.targets[0].slice)
        for key in token_loss_keys:
            text = _render(key, defaults)
            if text and re.fullmatch(r"[a-z_]+", text):
                names.add(TOKEN_LOSS_PREFIX + text)
        if isinstance(node, (ast.Constant, ast.JoinedStr)):
            candidates.append((node, False))
        for candidate, certain in candidates:
            text = _render(candidate, defaults)
            if text is None or NOT_LOGGED.search(text):
                continue
            if METRIC_NAME.match(text.replace(HOLE, "{}")) or (certain and text.strip(HOLE)):
                names.add(text)
        for child in ast.iter_child_nodes(node):
            if not isinstance(node, ast.JoinedStr):  # the pieces of an f-string are not names of their own
                visit(child, defaults)

    visit(tree, {})
    return names


def code_metric_names() -> dict[str, list[str]]:
    """Every metric name the library logs -> the files that log it."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in logged_names(path.read_text(encoding="utf-8")):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def glossary_names(text: str) -> list[str]:
    """The names the glossary documents: every code span in a table row's first column (``<x>`` is a placeholder
    for a run-time part, such as a reward component's name)."""
    names = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first_cell = line.split("|")[1]
            names += re.findall(r"`([^`]+)`", first_cell)
    return names


def documented(name: str, glossary: list[str]) -> bool:
    """``name`` (HOLE = a run-time part) is covered by a glossary entry: a fixed name must match an entry, where
    the entry's ``<x>`` matches anything; a name with a run-time part must match at least one entry."""
    if HOLE not in name:
        return any(re.fullmatch(re.sub(r"<[^>]*>", ".*", re.escape(e)), name) for e in glossary)
    pattern = ".+".join(re.escape(part) for part in name.split(HOLE))
    return any(re.fullmatch(pattern, entry) for entry in glossary)


def test_every_logged_metric_is_in_the_glossary():
    glossary = glossary_names(GLOSSARY.read_text(encoding="utf-8"))
    names = code_metric_names()
    assert len(names) > 40, f"the metric scan found only {sorted(names)}: has the logging code moved?"
    missing = {n.replace(HOLE, "{...}"): files for n, files in names.items() if not documented(n, glossary)}
    assert not missing, (
        "logged but not documented in docs/metrics.md (add a row: what it measures, who logs it, unit): "
        + "; ".join(f"{name} ({', '.join(files)})" for name, files in sorted(missing.items()))
    )


def test_a_new_undocumented_metric_fails_the_glossary_check():
    glossary = glossary_names(GLOSSARY.read_text(encoding="utf-8"))
    source = (
        "class M:\n"
        "    def __init__(self, prefix: str = 'probe'):\n"
        "        self.prefix = prefix\n"
        "    def step(self, name):\n"
        "        self.log('train/foo', 1.0)\n"
        "        self.log_dict({'sft/bar': 1.0, f'rollout/reward/{name}': 2.0})\n"
        "        stats = {'train/policy_loss': 0.0}\n"
        "        metrics = {'clip_fraction': 0.0, 'new_token_metric': 0.0}\n"
        "        metrics[f'{self.prefix}/baz'] = 3.0\n"
    )
    names = logged_names(source)
    undocumented = {n for n in names if not documented(n, glossary)}
    assert undocumented == {"train/foo", "sft/bar", "train/new_token_metric", "probe/baz"}
    assert {"train/policy_loss", "train/clip_fraction", f"rollout/reward/{HOLE}"} <= names - undocumented


def test_readme_is_a_short_front_page_with_the_quickstart_ci_reads():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; move detail to docs/ (at most 220)"
    for marker in ("<!-- quickstart-main -->", "<!-- quickstart-test -->"):
        assert marker in lines, f"README.md lost its {marker} marker"
        i = lines.index(marker)
        assert lines[i + 1] == "```bash" and lines[i + 2].startswith("pip install "), (
            f"{marker} must be followed by a ```bash fence and the command (.ci/run reads the second line after it)"
        )


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)  # links inside code are examples
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s):, mailto:, in-page anchors
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"


def test_readme_layout_lists_every_top_level_file_and_package():
    text = README.read_text(encoding="utf-8")
    layout = text[text.index("## Layout") :].split("```")[1]
    listed = set(re.findall(r"^\s+(\w+)(?:\.py|/)\s", layout, flags=re.MULTILINE))
    entries = [
        p for p in PACKAGE.iterdir() if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    ]
    missing = sorted(p.name for p in entries if p.stem not in listed)
    assert not missing, f"README.md's Layout does not list {missing}: add one line each"
