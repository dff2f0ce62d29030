"""The cached tasks' code hashes and Cache versions, and the check that a code change came with a version bump.

Flyte's cache key is a task's name, its Cache version and its inputs: not its code. A change to what a cached
task runs that leaves its version alone makes every later run reuse outputs of the old code. So the table
``tasks/cache_versions.json`` records, for every cached task, its Cache version and the sha256 of its code:
the module that defines it and every project module (sslflow/, ssl_models/, tasks/, images/) that module
imports, transitively, parent packages included. Each module is hashed as its normalised syntax tree
(``ast.dump`` without docstrings, line numbers or the ``cache=`` argument of a decorator), so reformatting,
comments and docstrings change no hash, and bumping one task's version does not change its neighbours' hashes.
Third-party packages (requirements.lock) are not hashed: the image's version covers them.

    python tests/cache_versions.py --update          # rewrite the table; refused while a task's code changed, unbumped
    python tests/cache_versions.py --update --bump   # first bump (+1) the Cache version of every such task in its file
    python tests/cache_versions.py --update --same-outputs  # a refactor: record the new hashes, keep the versions

``--same-outputs`` is a statement, not a shortcut: use it only when the change leaves every output of the
tasks it names as it was (a rename, a function moved, a closure that binds its variable), shown by the same
outputs before and after (e.g. the same `make run` table), and say so in the commit message.

``tests/test_cache_versions.py`` runs the check in ``make test``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import json
import pkgutil
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TABLE = PROJECT_ROOT / "tasks" / "cache_versions.json"
PROJECT_PACKAGES = ("sslflow", "ssl_models", "tasks", "images")
UPDATE_COMMAND = "python tests/cache_versions.py --update"


class _WithoutDocstringsOrCacheVersions(ast.NodeTransformer):
    """Drops docstrings (a string constant opening a module, class or function body) and the value of every
    ``cache=`` keyword (a task decorator's Cache and its version)."""

    def _drop_docstring(self, node):
        self.generic_visit(node)
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _drop_docstring

    def visit_keyword(self, node: ast.keyword):
        self.generic_visit(node)
        if node.arg == "cache":
            node.value = ast.Constant(value=None)
        return node


def module_path(name: str, root: Path) -> Path | None:
    """The file of project module ``name`` under ``root`` (a package's __init__.py), or None if it is not one."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(name: str, tree: ast.Module, root: Path) -> set[str]:
    """The project modules that module ``name`` imports (``from p import m`` counts p.m when it is a module), and
    the parent packages of each (importing a.b.c runs a and a.b)."""
    found = set()
    package = name if module_path(name, root).name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    with_parents = {".".join(module.split(".")[:i]) for module in found for i in range(1, module.count(".") + 2)}
    return {module for module in with_parents if module_path(module, root) is not None}


def normalised_tree(path: Path) -> str:
    """``path``'s syntax tree without docstrings, cache versions, comments, formatting or line numbers."""
    tree = _WithoutDocstringsOrCacheVersions().visit(ast.parse(path.read_text(), filename=str(path)))
    return ast.dump(tree, annotate_fields=True, include_attributes=False)


def code_of(module: str, root: Path) -> dict[str, str]:
    """{module name: normalised tree} of ``module`` and every project module it imports, transitively."""
    trees, pending = {}, [module]
    while pending:
        name = pending.pop()
        if name in trees:
            continue
        path = module_path(name, root)
        trees[name] = normalised_tree(path)
        pending += sorted(imported_modules(name, ast.parse(path.read_text()), root) - set(trees))
    return trees


def code_sha256(module: str, root: Path = PROJECT_ROOT) -> tuple[str, list[str]]:
    """(sha256 of the code a task defined in ``module`` runs, the modules hashed, sorted), reading sources under
    ``root``."""
    trees = code_of(module, root)
    digest = hashlib.sha256()
    for name in sorted(trees):
        digest.update(f"{name}\n{trees[name]}\n".encode())
    return digest.hexdigest(), sorted(trees)


def cached_tasks() -> dict[str, tuple[str, str, str]]:
    """{task name: (defining module, its file relative to the project, Cache version)} of every cached task in
    tasks/."""
    from flytekit.core.base_task import PythonTask

    import tasks

    found = {}
    for info in pkgutil.iter_modules(tasks.__path__, "tasks."):
        for value in vars(importlib.import_module(info.name)).values():
            if isinstance(value, PythonTask) and value.metadata.cache and value.name.startswith(info.name + "."):
                module = value.name.rpartition(".")[0]
                found[value.name] = (
                    module,
                    str(module_path(module, PROJECT_ROOT).relative_to(PROJECT_ROOT)),
                    value.metadata.cache_version,
                )
    return found


def current_table(root: Path = PROJECT_ROOT) -> dict[str, dict]:
    """The table as the code under ``root`` makes it: {task: {version, file, code_sha256, modules}}."""
    table = {}
    for name, (module, file, version) in sorted(cached_tasks().items()):
        sha256, modules = code_sha256(module, root)
        table[name] = {"version": version, "file": file, "code_sha256": sha256, "modules": modules}
    return table


def stale(recorded: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """One sentence per cached task whose code changed while its Cache version did not (the version to bump)."""
    problems = []
    for name, now in current.items():
        before = recorded.get(name)
        if before is not None and before["code_sha256"] != now["code_sha256"] and before["version"] == now["version"]:
            problems.append(
                f"task {name}: the code it runs changed (its module or a project module it imports) "
                f"but its Cache version is still {now['version']!r}: bump the version in {now['file']} "
                f"and run `{UPDATE_COMMAND}` to update {TABLE.name}"
            )
    return problems


def out_of_date(recorded: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """One sentence per task whose row in the table differs from the code (new, removed, bumped, hash changed)."""
    rows = sorted(set(recorded) | set(current))
    return [
        f"task {name}: {TABLE.name} records {recorded.get(name)} but the code gives {current.get(name)}"
        for name in rows
        if recorded.get(name) != current.get(name)
    ]


def version_literal(path: Path, function: str) -> ast.Constant:
    """The string constant of the Cache version in the decorator of task ``function`` in ``path``:
    ``cache=Cache(version= "7")`` or ``cache=pipeline_cache("7", ...)``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for decorator in node.decorator_list:
                for keyword in getattr(decorator, "keywords", []):
                    if keyword.arg == "cache" and isinstance(keyword.value, ast.Call):
                        call = keyword.value
                        candidates = [k.value for k in call.keywords if k.arg == "version"] + call.args[:1]
                        if (
                            candidates
                            and isinstance(candidates[0], ast.Constant)
                            and isinstance(candidates[0].value, str)
                        ):
                            return candidates[0]
    raise ValueError(
        f'{path}: no cache=...(version="...") literal on task {function}\'s decorator: bump its version by hand'
    )


def bump(task: str, root: Path = PROJECT_ROOT) -> str:
    """Raise ``task``'s Cache version in its source file: "7" -> "8" (a version that is not a number gets ".1"); returns
    it."""
    module, _, function = task.rpartition(".")
    path = module_path(module, root)
    literal = version_literal(path, function)
    new = str(int(literal.value) + 1) if literal.value.isdigit() else literal.value + ".1"
    lines = path.read_text().splitlines(keepends=True)
    line = lines[literal.lineno - 1]
    lines[literal.lineno - 1] = line[: literal.col_offset] + json.dumps(new) + line[literal.end_col_offset :]
    path.write_text("".join(lines))
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite tasks/cache_versions.json")
    parser.add_argument(
        "--bump", action="store_true", help="with --update: first bump the version of every task whose code changed"
    )
    parser.add_argument(
        "--same-outputs",
        action="store_true",
        help="with --update: record changed code without a bump (a refactor that leaves every output as it was)",
    )
    args = parser.parse_args()
    recorded = json.loads(TABLE.read_text()) if TABLE.is_file() else {}
    current = current_table()
    problems = stale(recorded, current)
    if problems and args.update and args.bump:
        for task in [
            name for name in current if name in recorded and stale({name: recorded[name]}, {name: current[name]})
        ]:
            current[task]["version"] = bump(task)
            print(
                f"{task}: Cache version {recorded[task]['version']!r} -> {current[task]['version']!r} "
                f"in {current[task]['file']}"
            )
        problems = stale(recorded, current)
    if problems and args.update and args.same_outputs:
        print("\n".join(f"recorded without a bump (same outputs): {problem}" for problem in problems))
        problems = []
    if problems:
        sys.exit("\n".join(["refused: bump these Cache versions first", *problems]))
    if args.update:
        TABLE.write_text(json.dumps(current, indent=1) + "\n")
        print(f"wrote {TABLE.relative_to(PROJECT_ROOT)}: {len(current)} cached tasks")
    else:
        print("\n".join(out_of_date(recorded, current)) or "the table matches the code")


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_ROOT))
    main()
