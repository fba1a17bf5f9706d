"""The architecture, checked from the source: layers import only downward, the layers above the
engine use only its public names, no import cycles, no file too long to read.

Layers, bottom to top: common < engine < scheduler < server < jobs < integrations < the entry
point (cli). Inside the engine, folders are layers too: build < checkpoints < ops < text <
families < the engine's own face (backend.py, __init__.py): ops never import families,
checkpoints never import ops.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tinyembed"
LAYERS = {"common": 0, "engine": 1, "scheduler": 2, "server": 3, "jobs": 4, "integrations": 5}
ENTRY_RANK = 6  # tinyembed/cli.py, bench_cli.py, __init__.py: the entry points
PUBLIC_ENGINE_USERS = {"scheduler", "server", "jobs", "integrations"}
MAX_LINES = 600
ENGINE_LAYERS = {"build": 0, "checkpoints": 1, "ops": 2, "text": 3, "families": 4}
ENGINE_FACE_RANK = 5  # tinyembed/engine/backend.py and __init__.py
# What users and bench/ import from tinyembed.engine; changing it breaks them.
ENGINE_FACE = {"DEFAULT_MODEL", "Engine", "ModelInfo", "expand_devices", "load_engine", "make_ops"}
OPS_CONTRACT = ("param", "to_host", "upload_batch", "embed", "matmul", "linear", "bias_gelu", "bias_residual_layernorm",
                "attention", "pool_normalize", "embedding", "rmsnorm", "add_rmsnorm", "head_rmsnorm", "rope",
                "gated_activation", "decoder_attention", "last_token", "l2_normalize")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1], LAYERS[parts[1]]
    return "entry", ENTRY_RANK


def engine_layer(module: str) -> tuple[str, int] | None:
    """The engine folder a module lives in and its rank, or None outside the engine."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] != "engine":
        return None
    if len(parts) >= 3 and parts[2] in ENGINE_LAYERS:
        return f"engine/{parts[2]}", ENGINE_LAYERS[parts[2]]
    return "engine", ENGINE_FACE_RANK


def imports_of(path: Path, module: str, modules: set[str]) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, names) for every tinyembed import in the file, function-level too.
    `from pkg import sub` counts as importing the submodule when `sub` is one."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, []) for alias in node.names if alias.name.startswith("tinyembed")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("tinyembed"):
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            rest = [n for n in names if f"{target}.{n}" not in modules]
            found += [(sub, node.lineno, []) for sub in submodules]
            if rest or not submodules:
                found.append((target, node.lineno, rest))
    return found


def violations(root: Path, public_engine_names: set[str]) -> list[str]:
    """Every broken rule in the package at `root`, as readable lines (empty when all hold)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    problems = []
    for module, path in files.items():
        here, rank = layer(module)
        where = f"{path.relative_to(root.parent)}"
        for target, line, names in imports_of(path, module, modules):
            graph[module].add(target)
            there, target_rank = layer(target)
            if target.split(".")[:2] == ["tinyembed", "cli"] and module != target:
                problems.append(f"{where}:{line} imports the entry point {target}")
            elif target_rank > rank and there != "entry":
                problems.append(f"{where}:{line}: {here} imports upward into {there} ({target})")
            elif here == there == "engine" and engine_layer(target)[1] > engine_layer(module)[1]:
                problems.append(f"{where}:{line}: {engine_layer(module)[0]} imports upward into "
                                f"{engine_layer(target)[0]} ({target})")
            elif here in PUBLIC_ENGINE_USERS and there == "engine":
                if target != "tinyembed.engine" or not set(names) <= public_engine_names:
                    problems.append(f"{where}:{line}: {here} reaches into engine internals ({target} "
                                    f"{', '.join(names)}); use the names exported by tinyembed.engine")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Module-level cycles (each reported once), by depth-first search."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def engine_public_names() -> set[str]:
    import tinyembed.engine

    return set(tinyembed.engine.__all__)


def test_tinyembed_follows_the_layering():
    assert violations(PACKAGE, engine_public_names()) == []


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "tinyembed" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in ["", *LAYERS, *(f"engine/{sub}" for sub in ENGINE_LAYERS)]:
        init = root / "tinyembed" / folder / "__init__.py"
        if not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text("")
    return root / "tinyembed"


@pytest.mark.parametrize("files, expected", [
    ({"engine/families/bert.py": "from tinyembed.server.app import App\n"}, "engine imports upward into server"),
    ({"scheduler/q.py": "from ..jobs import store\n", "jobs/store.py": ""}, "scheduler imports upward into jobs"),
    ({"server/app.py": "def f():\n    from tinyembed.jobs.routes import register\n"}, "server imports upward into jobs"),
    ({"jobs/bulk.py": "import tinyembed.cli\n", "cli.py": ""}, "imports the entry point"),
    ({"jobs/bulk.py": "from tinyembed.integrations import ray\n", "integrations/ray.py": ""},
     "jobs imports upward into integrations"),
    ({"integrations/ray.py": "from tinyembed.engine.backend import Engine\n", "engine/backend.py": ""},
     "engine internals"),
    ({"server/app.py": "from tinyembed.engine.families.bert import truncate\n", "engine/families/bert.py": ""}, "engine internals"),
    ({"engine/a.py": "from tinyembed.engine import b\n", "engine/b.py": "from . import a\n"}, "import cycle"),
    ({"engine/ops/numpy_ops.py": "from tinyembed.engine.families.bert import Batch\n", "engine/families/bert.py": ""},
     "engine/ops imports upward into engine/families"),
    ({"engine/checkpoints/spec.py": "def f():\n    from ..ops import c_ops\n", "engine/ops/c_ops.py": ""},
     "engine/checkpoints imports upward into engine/ops"),
    ({"engine/ops/c_ops.py": "from tinyembed.engine import backend\n", "engine/backend.py": ""},
     "engine/ops imports upward into engine (tinyembed.engine.backend)"),
])
def test_the_checker_catches_each_broken_rule(tmp_path, files, expected):
    problems = violations(write_tree(tmp_path, files), {"load_engine"})
    assert any(expected in p for p in problems), problems


def test_the_checker_accepts_downward_and_public_imports(tmp_path):
    root = write_tree(tmp_path, {
        "server/app.py": "from tinyembed.engine import load_engine\nfrom tinyembed.scheduler import q\n",
        "scheduler/q.py": "from tinyembed.common.errors import E\n", "common/errors.py": "",
        "cli.py": "from tinyembed.server.app import x\n",
        "engine/backend.py": "from tinyembed.engine.families import read_spec\n",
        "engine/families/bert.py": "from tinyembed.engine.ops.numpy_ops import normalize\n",
        "engine/ops/numpy_ops.py": "from tinyembed.engine.build.cpu_threads import cores\n",
        "engine/build/cpu_threads.py": ""})
    assert violations(root, {"load_engine"}) == []


def test_the_engine_face_stays_as_users_and_bench_know_it():
    import tinyembed.engine

    assert set(tinyembed.engine.__all__) == ENGINE_FACE
    assert all(callable(getattr(tinyembed.engine, name)) for name in ENGINE_FACE - {"DEFAULT_MODEL"})


def test_every_backend_keeps_the_ops_contract():
    from tinyembed.engine.ops.c_ops import COps
    from tinyembed.engine.ops.cuda_ops import CudaOps
    from tinyembed.engine.ops.numpy_ops import NumpyOps

    for backend in (NumpyOps, COps, CudaOps):  # class attributes: no GPU or compiler needed
        assert [op for op in OPS_CONTRACT if not callable(getattr(backend, op, None))] == [], backend


def test_no_file_is_too_long_to_read():
    long_files = []
    for folder in ("tinyembed", "kernels", "bench"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".c", ".h", ".cu", ".cuh", ".sh"} and ".venv" not in path.parts:
                lines = len(path.read_text(errors="replace").splitlines())
                if lines > MAX_LINES:
                    long_files.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert long_files == []
