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


def runtime_imports(source: Path) -> set[str]:
    """The lottery_keras modules `source` imports when it runs (at the top or inside functions; not those under
    `if TYPE_CHECKING:`, for annotations only), naming a module rather than a name it defines."""
    tree = ast.parse(source.read_text())
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and ast.unparse(block.test) == "TYPE_CHECKING" for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {name if (PACKAGE.parent / f"{name.replace('.', '/')}.py").is_file() else node.module
                      for name in modules}
    return {name.removeprefix("lottery_keras.") for name in found if name.startswith("lottery_keras.")}


def test_no_module_imports_itself_through_others():
    modules = {str(path.relative_to(PACKAGE).with_suffix("")).replace("/", "."): path
               for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}
    graph = {name: {module for module in runtime_imports(path) if module in modules} for name, path in modules.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            name, trail = stack.pop()
            for module in graph[name]:
                if module == start:
                    return [*trail, module]
                if module not in seen:
                    seen.add(module)
                    stack.append((module, [*trail, module]))
        return None

    cycles = [" → ".join(cycle) for cycle in map(cycle_from, modules) if cycle]
    assert not cycles, "\n".join(cycles)


def test_the_controller_is_small_and_decides_nothing_by_a_registered_name():
    """Strategies, mask sources and start rules are the registries' (lottery/strategies.py, masks.py, starts.py):
    the controller compares none of their names and keys, and no class of it outgrows 250 lines."""
    from lottery_keras.lottery import masks, starts, strategies

    tree = ast.parse((PACKAGE / "lottery" / "controller.py").read_text())
    registered = set(strategies.STRATEGIES) | set(masks.MASK_SOURCES) | set(starts.STARTS)
    comparisons = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    operands = [operand for node in comparisons for operand in (node.left, *node.comparators)]
    assert not [ast.unparse(operand) for operand in operands
                if isinstance(operand, ast.Constant) and operand.value in registered
                or isinstance(operand, ast.Attribute) and operand.attr in {"masks", "start", "name", "strategy"}]
    sizes = {node.name: node.end_lineno - node.lineno + 1 for node in tree.body if isinstance(node, ast.ClassDef)}
    assert max(sizes.values()) <= 250, sizes
