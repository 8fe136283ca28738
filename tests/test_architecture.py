"""The shape of the package (docs/architecture.md): small modules, no import cycles, and
physics modules that know nothing of files, the command line or the run loop.

Imports are read with :mod:`ast`, not by importing: only ``nnqmc`` modules count, relative
imports included. Cycles are checked twice: among module-level imports (those that run at
import time and can meet a half-initialised module), and among all imports, since an import
moved into a function only hides a cycle (api <-> custom was one: api imported
``default_observables`` inside ``evaluate``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "nnqmc"
MAX_LINES = 500

# Physics: wavefunctions, Hamiltonians, sampling, Laplacians, statistics, SCF.
PHYSICS = (
    "nnqmc.ansatz",
    "nnqmc.ecp",
    "nnqmc.hamiltonian",
    "nnqmc.orbitals",
    "nnqmc.sampler",
    "nnqmc.laplacian",
    "nnqmc.estimate",
    "nnqmc.external",
    "nnqmc.molecule",
    "nnqmc.pseudopotentials",
    "nnqmc.scf",
)
# What physics must not import: files, the command line, the public surface, the loop.
FORBIDDEN = (
    "nnqmc.io",
    "nnqmc.cli",
    "nnqmc.api",
    "nnqmc.rundir",
    "nnqmc.runner",
    "nnqmc.run_setup",
    "nnqmc.phases",
    "nnqmc.plot",
    "nnqmc.bench",
    "nnqmc.pes",
)


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _import_nodes(tree: ast.Module, module_level: bool) -> list[ast.stmt]:
    """Import statements of a module: at module level (also inside top-level if/try blocks,
    not ``if TYPE_CHECKING:``), or anywhere."""
    if not module_level:
        return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: list[ast.stmt] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return found


def imports_of(
    name: str, path: Path, modules: dict[str, Path], module_level: bool = True
) -> set[str]:
    """The package modules that module ``name`` imports (``from .x import y`` counts as an
    import of ``.x.y`` when that is a module, else of ``.x``)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _import_nodes(tree, module_level):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [
                f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem
                for alias in node.names
            ]
        for target in targets:
            while target and target not in modules:  # import a.b.c of a module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph(root: Path, package: str = PACKAGE, module_level: bool = True):
    modules = module_files(root, package)
    return {n: imports_of(n, p, modules, module_level) for n, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]``, or None if the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Module -> the module that imports it on one path from ``start``."""
    parent: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in parent and nxt != start:
                parent[nxt] = node
                todo.append(nxt)
    return parent


# --------------------------------------------------------------------------- the package
def test_no_module_is_over_500_lines():
    sizes = {n: len(p.read_text().splitlines()) for n, p in module_files(ROOT).items()}
    assert len(sizes) > 30
    big = {n: s for n, s in sizes.items() if s > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


@pytest.mark.parametrize("module_level", [True, False], ids=["module-level", "all"])
def test_no_import_cycles(module_level):
    graph = import_graph(ROOT, module_level=module_level)
    assert "nnqmc.run_setup" in graph["nnqmc.custom"]  # the graph sees relative imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_physics_imports_no_io_cli_or_loop():
    modules = module_files(ROOT)
    physics = [n for n in modules if _under(n, PHYSICS)]
    assert {"nnqmc.ansatz.paulinet", "nnqmc.hamiltonian", "nnqmc.scf"} <= set(physics)
    anywhere = import_graph(ROOT, module_level=False)
    module_level = import_graph(ROOT)
    for name in physics:  # no import at all, not even inside a function
        bad = sorted(t for t in anywhere[name] if _under(t, FORBIDDEN))
        assert not bad, f"{name} imports {bad}"
        chain = reachable(module_level, name)  # nor through another module
        for target in chain:
            if _under(target, FORBIDDEN):
                via = [target]
                while via[-1] in chain:
                    via.append(chain[via[-1]])
                pytest.fail(f"{name} imports {target} via {' <- '.join(via)}")


# Physics that must work on plain arrays: PySCF's data (orbitals, ECP tables) enter only
# through nnqmc.scf, so one compiled step serves any basis or potential of the same shape.
NO_PYSCF = ("nnqmc.ecp", "nnqmc.hamiltonian", "nnqmc.diffusion", "nnqmc.steps", "nnqmc.ansatz")


def _external_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports anywhere in a file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_ecp_and_hamiltonian_physics_import_no_pyscf():
    modules = module_files(ROOT)
    checked = [n for n in modules if _under(n, NO_PYSCF)]
    assert {"nnqmc.ecp", "nnqmc.hamiltonian"} <= set(checked)
    for name in checked:
        assert "pyscf" not in _external_imports(modules[name]), f"{name} imports pyscf"


# Batched LAPACK (jnp.linalg / jax.scipy.linalg factorisations) inside the walker-batched
# physics can hang the process on a 2-core CPU (nnqmc.ansatz.determinants.gauss_jordan says
# why); determinants go through nnqmc.ansatz.determinants.slogdet.
NO_BATCHED_LAPACK = (
    "nnqmc.ecp",
    "nnqmc.hamiltonian",
    "nnqmc.diffusion",
    "nnqmc.steps",
    "nnqmc.ansatz",
    "nnqmc.orbitals",
    "nnqmc.laplacian",
    "nnqmc.sampler",
)
LAPACK_CALLS = (
    "linalg.slogdet",
    "linalg.det",
    "linalg.inv",
    "linalg.solve",
    "linalg.lu",
    "linalg.qr",
    "linalg.eigh",
    "linalg.cholesky",
)


def _lapack_calls(path: Path) -> list[str]:
    """``jnp.linalg.*`` / ``jax.scipy.linalg.*`` factorisation calls in a file (NumPy's
    ``np.linalg`` runs outside jit and does not count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            text = ast.unparse(node)
            if text.startswith(("jnp.", "jax.")) and text.endswith(LAPACK_CALLS):
                found.append(text)
    return found


def test_walker_physics_calls_no_batched_lapack():
    modules = module_files(ROOT)
    checked = [n for n in modules if _under(n, NO_BATCHED_LAPACK)]
    assert "nnqmc.ansatz.determinants" in checked
    for name in checked:
        assert not _lapack_calls(modules[name]), f"{name} calls {_lapack_calls(modules[name])}"


def test_the_lapack_check_sees_a_call(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import jax.numpy as jnp\ns = jnp.linalg.slogdet(a)\nt = np.linalg.det(b)\n")
    assert _lapack_calls(path) == ["jnp.linalg.slogdet"]


# Checkpoints and logs are opened by the loop (nnqmc.driver) through nnqmc.io, never by a
# phase: no h5py, no io function that saves, loads, reads or writes a file, no open().
IO_FILE_FUNCTION = re.compile(r"(save|load|read|write)_\w+|AppendLog|set_attrs|atomic_path")


def _file_access(path: Path) -> list[str]:
    """What in a file opens a file: h5py imports, nnqmc.io's file functions (``io.f`` or
    imported from ``io``), the built-in ``open``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "h5py"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] == "h5py":
                found.append(module)
            elif module.split(".")[-1] == "io":
                found += [a.name for a in node.names if IO_FILE_FUNCTION.fullmatch(a.name)]
        elif isinstance(node, ast.Attribute) and ast.unparse(node.value) == "io":
            if IO_FILE_FUNCTION.fullmatch(node.attr):
                found.append(f"io.{node.attr}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "open":
            found.append("open")
    return found


def test_no_phase_opens_a_checkpoint_or_log_itself():
    modules = module_files(ROOT)
    phases = [n for n in modules if _under(n, ("nnqmc.phases",))]
    assert {"nnqmc.phases.training", "nnqmc.phases.evaluation", "nnqmc.phases.dmc"} <= set(phases)
    for name in phases:
        assert not _file_access(modules[name]), f"{name} opens files: {_file_access(modules[name])}"


def test_the_file_check_sees_each_way_in(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "import h5py\nfrom .. import io\nfrom ..io import AppendLog, TRAIN_COLUMNS\n"
        "io.save_checkpoint(p, step=1)\nn = io.TRAIN_LOG\nopen(p)\nsaved_state(s)\n"
    )
    assert sorted(_file_access(path)) == ["AppendLog", "h5py", "io.save_checkpoint", "open"]


# Steps are pmapped only where programs are made (nnqmc.programs, from one device's steps of
# nnqmc.steps and nnqmc.diffusion): the bench times the programs a run executes.
STEP_ROOMS = ("nnqmc.programs", "nnqmc.steps", "nnqmc.diffusion")
STEP_MAKER = re.compile(r"make_\w*_step|make_walkers")


def _step_makers(path: Path) -> list[str]:
    """The ``make_*_step`` (or ``make_walkers``) names a file defines, imports or uses."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        name = getattr(node, "id", None) or getattr(node, "attr", None)
        if isinstance(node, (ast.FunctionDef, ast.alias)):
            name = node.name
        if isinstance(name, str) and STEP_MAKER.fullmatch(name):
            found.append(name)
    return found


def test_the_bench_times_the_runs_programs():
    modules = module_files(ROOT)
    for name, path in modules.items():
        if not _under(name, STEP_ROOMS):
            assert not _step_makers(path), f"{name} makes its own steps: {_step_makers(path)}"
    bench = modules["nnqmc.bench"].read_text()
    for program in ("train_program", "burn_in_program", "eval_program", "dmc_program"):
        assert f"{program}(run)" in bench, program


def test_the_step_check_sees_each_way_in(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from .steps import make_train_step\nstep = diffusion.make_dmc_step(a)\n"
        "def make_eval_step():\n    pass\nmake_walkers(a)\nmake_run(a)\n"
    )
    found = sorted(_step_makers(path))
    assert found == ["make_dmc_step", "make_eval_step", "make_train_step", "make_walkers"]


def test_one_public_surface_and_no_name_shadows_a_module():
    """``nnqmc`` and ``nnqmc.api`` export the same names, one ``__version__``; no public
    name is also a top-level module's name (``nnqmc.train`` the function against a module
    ``nnqmc/train.py``)."""
    import nnqmc
    import nnqmc.api
    import nnqmc.runner
    import nnqmc.version

    assert set(nnqmc.__all__) == set(nnqmc.api.__all__)
    for name in nnqmc.__all__:
        assert getattr(nnqmc, name) is getattr(nnqmc.api, name), name
    assert nnqmc.__version__ is nnqmc.version.__version__ is nnqmc.runner.__version__
    root = Path(nnqmc.__file__).parent
    modules = {p.stem for p in root.glob("*.py")}
    modules |= {p.parent.name for p in root.glob("*/__init__.py")}
    assert not set(nnqmc.__all__) & modules


# --------------------------------------------------------------------------- the checks fail
def _write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_see_relative_cycles_and_skip_function_level_imports(tmp_path):
    _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .sub import b\n",
            "sub/__init__.py": "",
            "sub/b.py": "from ..c import thing\n",
            "c.py": "import pkg.a\n\ndef f():\n    from . import d\n",
            "d.py": "from . import c\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.a"}  # the import inside f() does not count
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    assert "pkg.d" in import_graph(tmp_path, "pkg", module_level=False)["pkg.c"]
    assert reachable(graph, "pkg.sub.b") == {"pkg.c": "pkg.sub.b", "pkg.a": "pkg.c"}
    graph["pkg.c"] = set()
    assert find_cycle(graph) is None
