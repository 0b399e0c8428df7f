"""The package's layering as docs/how-it-works.md states it, checked on the imports as they are: dependencies point
one way, `cli` → `lottery` → `train` → `nn`, and the readers of run folders stay off the training code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lottery_keras"
BASE = ("config", "catalog", "columns", "data", "storage", "registry")  # import no TensorFlow; usable by every layer
# what each part may import besides itself and BASE (a module path allows it and everything below it)
ALLOWED = {
    "nn": (),
    "train": ("nn",),
    "lottery": ("nn", "train"),
    "sparsity": ("nn", "lottery.pruning"),
    "analysis": ("lottery.paths", "lottery.strategies"),
    "deploy": ("nn", "train.evaluation", "lottery.paths", "lottery.strategies", "lottery.pruning"),
}


def imported_modules(source: Path) -> set[str]:
    """The lottery_keras modules `source` imports, without the package prefix (`nn.layers`, `config`, …)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name.removeprefix("lottery_keras.") for name in names if name.startswith("lottery_keras.")}
    return found


def is_within(module: str, allowed: str) -> bool:
    return module == allowed or module.startswith(f"{allowed}.")


def test_imported_modules_are_read_from_the_source(tmp_path):
    source = tmp_path / "example.py"
    source.write_text("import lottery_keras.nn.layers\nfrom lottery_keras.train import plan as p\n"
                      "def f():\n    from lottery_keras.config import Experiment\nimport keras\n")
    assert imported_modules(source) == {"nn.layers", "train.plan", "config.Experiment"}


def test_base_modules_import_only_each_other():
    for name in BASE:
        imported = imported_modules(PACKAGE / f"{name}.py")
        assert all(module.split(".")[0] in BASE for module in imported), (name, imported)


def test_every_part_imports_only_what_the_layering_allows():
    wrong = []
    for part, allowed in ALLOWED.items():
        for source in sorted((PACKAGE / part).glob("*.py")):
            for module in sorted(imported_modules(source)):
                if not any(is_within(module, other) for other in (part, *BASE, *allowed)):
                    wrong.append(f"{source.relative_to(PACKAGE.parent)} imports lottery_keras.{module}")
    assert not wrong, "\n".join(wrong)
