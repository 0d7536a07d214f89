"""The house in wings stays standing: imports run downward only, and every DVC stage lists the
pipeline modules it imports (its import closure) as dependencies."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipeline"

# Lower numbers sit lower in the house; a module may import its own wing or any lower one.
WINGS = {"core": 0, "data": 1, "models": 1, "training": 2, "eval": 3, "report": 3, "cli": 4}
RUNNER = 5
# Same-level wings that must not import each other.
APART = {frozenset({"data", "models"}), frozenset({"eval", "report"})}
ML_MODULES = ("pipeline.models", "pipeline.training", "pipeline.eval", "pipeline.data")


def imports_of(path: Path) -> set[str]:
    """`pipeline.*` modules imported anywhere in the file (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            for a in node.names:   # `from pipeline.core import dist` names a module
                sub = f"{node.module}.{a.name}"
                found.add(sub if module_file(sub) else node.module)
    return found


def module_file(module: str) -> Path | None:
    base = ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def closure(script: Path) -> set[Path]:
    """Every pipeline source file that running `script` can import."""
    todo, seen = [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [f for m in imports_of(path) if (f := module_file(m)) is not None]
    return {p for p in seen if p != script and p.name != "__init__.py"}


def level(module_path: Path) -> tuple[str, int]:
    parts = module_path.relative_to(PIPELINE).parts
    if len(parts) == 1:
        return "runner", RUNNER
    return parts[0], WINGS[parts[0]]


def package_modules() -> list[Path]:
    return sorted(p for p in PIPELINE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def test_root_of_the_package_holds_only_stage_runners():
    stems = {p.stem for p in PIPELINE.glob("*.py")}
    runners = {Path(s).stem for s in (ROOT / "stages").glob("*.py")}
    assert stems - {"__init__", "__main__"} <= runners
    assert {p.name for p in PIPELINE.iterdir() if p.is_dir() and p.name != "__pycache__"} \
        == set(WINGS)


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_downward_only(path):
    wing, mine = level(path)
    for module in imports_of(path):
        target = module_file(module)
        if target is None or target.name == "__init__.py" or target.name == "__main__.py":
            continue
        other, theirs = level(target)
        assert theirs < mine or other == wing and wing != "runner", \
            f"{path.relative_to(ROOT)} imports {module}, a wing above or beside it"
        assert frozenset({wing, other}) not in APART, f"{path} imports across to {module}"
    if wing == "core":
        assert not [m for m in imports_of(path) if m.startswith(ML_MODULES)]


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _stage_deps() -> dict[str, list[str]]:
    return {name: [d for d in s.get("deps", []) if not d.startswith("${")]
            for name, s in _stages().items()}


@pytest.mark.parametrize("stage", sorted(_stage_deps()))
def test_every_imported_module_is_a_dependency_of_its_stage(stage):
    deps = _stage_deps()[stage]
    script = _stages()[stage]["cmd"].split()[1]   # `python stages/<script>.py ...`
    needed = {p.relative_to(ROOT).as_posix() for p in closure(ROOT / script)}
    covered = {n for n in needed if any(n == d or n.startswith(d.rstrip("/") + "/") for d in deps)}
    assert needed == covered, f"dvc.yaml stage {stage} misses deps: {sorted(needed - covered)}"
    listed = {d for d in deps if d.startswith("pipeline/") and d.endswith(".py")}
    assert listed <= needed, f"dvc.yaml stage {stage} lists unused deps: {sorted(listed - needed)}"
