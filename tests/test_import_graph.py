"""The import graph of lit_rlhf flows one way: no import runs up a floor.

Every ``import`` of every ``lit_rlhf`` file is parsed (``ast``: function-level imports count too) and checked
against the layering below, so an import such as ``from lit_rlhf.modules import ...`` in ``engines/`` fails here
instead of becoming a cycle worked around by a function-level import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_rlhf"

#: The low files every layer may use (their split into files by concern keeps these top-level names or adds
#: new ones, which land in no rule below until one is given).
FOUNDATION = {"errors", "settings", "atomic", "random_state", "precision", "models", "lora", "distributed", "resume"}
#: What the training loop is built from, above the foundation.
CORE_ABOVE_FOUNDATION = {
    "data",
    "episodes",
    "engines",
    "rewards",
    "modules",
    "callbacks",
    "evaluation",
    "evaluate",
    "sampling",
    "label",
    "trainer_cli",
    "cli",
    "cli_errors",
}

#: top-level part of lit_rlhf -> the only parts it may import (besides itself).
ALLOWED = {
    "algorithms": set(),
    "episodes": {"algorithms", "models", "errors", "settings"},
}
#: What is built on the data layer: neither the data modules nor the command's reliability hooks may import it.
ABOVE_THE_DATA = {
    "episodes",
    "engines",
    "rewards",
    "modules",
    "callbacks",
    "evaluation",
    "evaluate",
    "sampling",
    "sandbox",
    "label",
    "trainer_cli",
    "cli",
}
#: What evaluates or samples trained policies, and the commands: engines and rewards are below all of it.
EVALUATION_AND_COMMANDS = {"evaluation", "evaluate", "sampling", "label", "trainer_cli", "cli"}
#: top-level part of lit_rlhf -> parts it must never import.
FORBIDDEN = {
    **{name: CORE_ABOVE_FOUNDATION | {"sandbox"} for name in FOUNDATION},
    "engines": {"modules", "callbacks", "sandbox", "rewards"} | EVALUATION_AND_COMMANDS,
    "rewards": {"modules", "callbacks", "sandbox", "engines"} | EVALUATION_AND_COMMANDS,
    "data": ABOVE_THE_DATA,
    "evaluation": {"modules", "callbacks", "sandbox", "evaluate", "trainer_cli", "cli"},
    # The evaluation command and the path it shares with the sandbox: built on engines, rewards and evaluation.
    "evaluate": {"modules", "callbacks", "sandbox", "label", "trainer_cli", "cli"},
    "sampling": {"modules", "callbacks", "sandbox", "trainer_cli", "cli"},
    "modules": {"callbacks", "sandbox", "evaluate", "trainer_cli", "cli"},
    "callbacks": {"sandbox", "evaluate", "trainer_cli", "cli"},
    "label": {"modules", "engines", "rewards", "callbacks", "sandbox", "trainer_cli"},
    "trainer_cli": {"sandbox"},
    "reliability": ABOVE_THE_DATA,
}


def part(dotted: str) -> str:
    """``lit_rlhf.engines.hf`` -> ``engines``; ``lit_rlhf`` -> ``lit_rlhf`` (the package itself)."""
    pieces = dotted.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool) -> set[str]:
    """Every lit_rlhf module a file imports (absolute and relative, at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return {module for module in found if module == "lit_rlhf" or module.startswith("lit_rlhf.")}


def violations(name: str, imports: set[str]) -> list[str]:
    """The imports of module ``name`` that break the layering, as ``importer -> imported`` lines."""
    own, found = part(name), []
    for imported in sorted(imports):
        other = part(imported)
        if other == own:
            continue
        if own in ALLOWED and other not in ALLOWED[own]:
            found.append(f"{name} -> {imported} ({own} may import only {sorted(ALLOWED[own]) or 'itself'})")
        elif other in FORBIDDEN.get(own, set()):
            found.append(f"{name} -> {imported} ({own} must not import {other})")
        elif other == "sandbox" and own not in ("sandbox", "cli"):  # core never imports the sandbox (cli dispatches)
            found.append(f"{name} -> {imported} (core code must not import the sandbox)")
    return found


def all_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_import_follows_the_layering():
    found = []
    for path in all_files():
        name = module_name(path)
        found += violations(name, imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py"))
    assert not found, "imports that run up a floor:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "importer, source, broken",
    [
        ("lit_rlhf.engines.hf", "from lit_rlhf.modules import PPOModule", "engines must not import modules"),
        (
            "lit_rlhf.engines.hf",
            "def f():\n    from lit_rlhf.modules.rollout import in_chunks",
            "engines must not import modules",
        ),
        ("lit_rlhf.rewards.base", "import lit_rlhf.modules.ppo", "rewards must not import modules"),
        ("lit_rlhf.algorithms.kl", "from lit_rlhf.models import token_scores", "algorithms may import only itself"),
        ("lit_rlhf.episodes", "from lit_rlhf.engines import HFEngine", "episodes may import only"),
        ("lit_rlhf.modules.ppo", "from lit_rlhf.sandbox.rewards import GoldReward", "modules must not import sandbox"),
        (
            "lit_rlhf.evaluation",
            "from lit_rlhf.sandbox.labeler import GoldLabeler",
            "evaluation must not import sandbox",
        ),
        ("lit_rlhf.engines.vllm", "from ..modules import rollout", "engines must not import modules"),
    ],
)
def test_the_check_catches_an_import_up_a_floor(importer, source, broken):
    found = violations(importer, imported_modules(source, importer, is_package=False))
    assert found and broken in found[0], found


def test_the_layering_names_existing_parts():
    parts = {path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0] for path in all_files()}
    named = set(ALLOWED) | set(FORBIDDEN) | {other for others in FORBIDDEN.values() for other in others}
    assert {"algorithms", "episodes", "engines", "rewards", "modules", "callbacks", "sandbox"} <= parts
    missing = named - parts - FOUNDATION  # foundation files may be split into packages of other names
    assert not missing, f"the layering names parts that do not exist: {sorted(missing)}"
