"""The rules that keep the code readable, held in spirit: layers import downward only (the
README's layer sentence), no module past 400 lines, no function past nine parameters, imports
inside functions only for heavy dependencies, no logic in a package's __init__.py, a short list
of loose modules in luna_core, and ComfyUI node functions that take exactly their inputs."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "luna_core",
    "luna_assets",
    "luna_cli",
    "dagster_project",
    "luna_service",
    "comfyui_luna",
)
PROJECT = set(PACKAGES)
# The layering: each package and the project packages it may import. luna_core imports none.
# comfyui_luna keeps a luna_service.LunaService in process: the vault and the projector loaded
# once and swapped when a new index version or champion appears, exactly as `luna serve` does;
# the service imports neither the nodes nor Dagster, so the nodes stay a client of it.
MAY_IMPORT = {
    "luna_core": set(),
    "luna_assets": {"luna_core"},
    "dagster_project": {"luna_assets"},
    "luna_cli": {"dagster_project", "luna_assets", "luna_core", "luna_service"},
    "luna_service": {"luna_core"},
    "comfyui_luna": {"luna_core", "luna_service"},
}
MAX_LOOSE_CORE_MODULES = 8


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(package: str) -> dict[str, set[str]]:
    """Module → the project modules it imports (at any depth of the file), from the source."""
    graph = {}
    for path, module in _modules(package):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from pkg import submodule` depends on the submodule, not on the package itself.
                folder = ROOT / node.module.replace(".", "/")
                subs = {
                    f"{node.module}.{alias.name}"
                    for alias in node.names
                    if (folder / f"{alias.name}.py").exists()
                    or (folder / alias.name / "__init__.py").exists()
                }
                found.update(subs or {node.module})
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[module] = {m for m in found if m.split(".")[0] in PROJECT | {"dagster"}}
    return graph


def test_luna_core_never_imports_dagster():
    code = (
        "import sys, luna_core.ingest.run, luna_core.samples, luna_core.catalog.connection, "
        "luna_core.ingest.scan, luna_core.home.home;"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'dagster']; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    graph = _imports("luna_core")
    assert not {m: d for m, d in graph.items() if any(x.split(".")[0] == "dagster" for x in d)}


def test_layers_import_downward_only():
    """Each package imports only the packages below it (MAY_IMPORT says which, and why the ComfyUI
    nodes may use the query service); inside luna_assets, definitions.py → defs/<domain>/ → the
    shared pieces (resources, automation, metadata, executor, runs, launchpad)."""
    for package, allowed in MAY_IMPORT.items():
        graph = _imports(package)
        outside = {
            module: sorted(d for d in deps if d.split(".")[0] not in allowed | {package, "dagster"})
            for module, deps in graph.items()
        }
        assert not {m: d for m, d in outside.items() if d}, f"{package} reaches outside its layer"
        if package in ("luna_service", "comfyui_luna"):
            dagster = {m for m, deps in graph.items() if any(d.startswith("dagster") for d in deps)}
            assert not dagster, f"{package} imports Dagster: {dagster}"
    assets = _imports("luna_assets")
    shared = {
        m: deps
        for m, deps in assets.items()
        if not m.startswith(("luna_assets.defs", "luna_assets.definitions"))
        and any(d.startswith(("luna_assets.defs", "luna_assets.definitions")) for d in deps)
    }
    assert not shared, f"shared pieces reach up into the domains: {shared}"
    domains = {
        m: deps
        for m, deps in assets.items()
        if m.startswith("luna_assets.defs.")
        and any(d == "luna_assets.definitions" or d == "luna_assets.defs" for d in deps)
    }
    assert not domains, f"a domain reaches up to the assembly: {domains}"


def test_the_readme_states_the_layering_the_tests_hold():
    layout = (ROOT / "docs" / "layout.md").read_text()
    assert "`comfyui_luna` → `luna_service` → `luna_core`" in layout
    assert "`luna_cli` → `dagster_project` → `luna_assets` → `luna_core`" in layout


def test_the_import_graph_has_no_cycle():
    graph = {}
    for package in PACKAGES:
        graph.update(_imports(package))
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in graph.get(module, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " → ".join(trail + [module, dep]))
            if dep in graph and not state.get(dep):
                visit(dep, trail + [module])
        state[module] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [])


def test_no_module_is_over_400_lines():
    """A module a person can read in one sitting: past 400 lines, a module gets split along its
    seams."""
    long = {
        str(path.relative_to(ROOT)): n
        for package in PACKAGES
        for path, _ in _modules(package)
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert long == {}


def test_luna_core_has_few_loose_modules_and_init_files_hold_no_logic():
    """The tree shows the design: luna_core's modules live in packages named by what they are (a
    few shared ones stay at the top), and an __init__.py is a docstring and re-exports."""
    loose = sorted(p.name for p in (ROOT / "luna_core").glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_LOOSE_CORE_MODULES, loose
    logic = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("__init__.py"):
            body = ast.parse(path.read_text()).body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            for node in body:
                names = [t.id for t in node.targets] if isinstance(node, ast.Assign) else []
                if isinstance(node, (ast.Import, ast.ImportFrom)) or names in (
                    ["__all__"],
                    ["__version__"],
                ):
                    continue
                logic.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert logic == []


def test_no_two_modules_share_a_name_that_means_two_things():
    """settings.py is the settings table alone; library.py, query.py and test_*.py are gone from the
    packages (each meant two things, or read as a test)."""
    names = {}
    for package in PACKAGES:
        for path, module in _modules(package):
            names.setdefault(path.name, []).append(module)
    assert names.get("settings.py") == ["luna_core.home.settings"]
    assert "library.py" not in names and "query.py" not in names
    assert not [n for n in names if n.startswith("test_")]


# Imports inside functions are for these alone: each takes from a third of a second to seconds to
# import, and most commands never need them (`luna --help`, `luna config`, a served request, a
# code-location load).
HEAVY = (
    "torch",
    "comfy",  # ComfyUI's own modules: present only inside a ComfyUI process
    "transformers",
    "diffusers",
    "safetensors.torch",
    "compel",
    "mlflow",
    "dagster",
    "dagster_celery",
    "celery",
    "billiard",
    "matplotlib",
    "psycopg2",
    "upath",
    "uvicorn",
)
# the Dagster code location is loaded by every run and step process
ENTRY_POINTS = (
    "luna_cli",
    "comfyui_luna",
    "luna_assets",
)  # may defer a project module that pulls one of HEAVY in


def _pulls_heavy(module: str) -> bool:
    """Whether a project module imports a heavy dependency at its top level."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        return False
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            if any(any(n == h or n.startswith(h + ".") for h in HEAVY) for n in names if n):
                return True
    return False


def test_imports_inside_functions_are_heavy_and_say_why():
    """No lazy-import tricks: a function-level import is of a heavy dependency (or of a project
    module that imports one at its top; in an entry point, of any project module that pulls one
    in), with a comment on it or just above its block saying why."""
    offenders = []
    for package in PACKAGES:
        for path, _ in _modules(package):
            lines = path.read_text().splitlines()
            for function in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                statements = [
                    n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))
                ]
                for node in statements:
                    names = (
                        [node.module]
                        if isinstance(node, ast.ImportFrom)
                        else [a.name for a in node.names]
                    )
                    heavy = all(any(n == h or n.startswith(h + ".") for h in HEAVY) for n in names)
                    deferred = all(
                        n.split(".")[0].startswith("luna_")
                        and (package in ENTRY_POINTS or _pulls_heavy(n))
                        for n in names
                    )
                    # the block of imports this one belongs to, and the line above it
                    first = node.lineno
                    while (
                        first > 1
                        and lines[first - 2].strip().startswith(("from ", "import ", "#", ")"))
                        or (
                            first > 1
                            and lines[first - 2].startswith(" ")
                            and lines[first - 2].strip().endswith(",")
                        )
                    ):
                        first -= 1
                    said = any("#" in line for line in lines[first - 1 : node.end_lineno])
                    if not (heavy or deferred) or not said:
                        offenders.append(
                            f"{path.relative_to(ROOT)}:{node.lineno} {', '.join(names)}"
                            + ("" if heavy or deferred else " (not heavy)")
                            + ("" if said else " (no why)")
                        )
    assert offenders == [], "\n".join(offenders)


def _node_functions():
    """(node class, its entry function) for every node the ComfyUI pack registers."""
    from comfyui_luna.nodes import NODE_CLASS_MAPPINGS

    for node in NODE_CLASS_MAPPINGS.values():
        yield node, getattr(node, node.FUNCTION)


def test_no_function_takes_ten_parameters_or_more():
    """Past nine parameters a call cannot be read: related ones travel together as one declared
    option set. A ComfyUI node's function is the exception ComfyUI makes: it is called with each
    input by name, so its parameters are its inputs, one for one (the next test holds that)."""
    nodes = {
        (inspect.getsourcefile(function), function.__name__, inspect.getsourcelines(function)[1])
        for _, function in _node_functions()
    }
    long = []
    for package in PACKAGES:
        for path, _ in _modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = node.args
                    names = [
                        x.arg
                        for x in a.posonlyargs + a.args + a.kwonlyargs
                        if x.arg not in ("self", "cls")
                    ]
                    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                    if len(names) >= 10 and (str(path), node.name, first) not in nodes:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long == []


def test_comfyui_node_functions_take_exactly_their_inputs_by_name(monkeypatch):
    """ComfyUI calls a node's function with each input by name: no **kwargs hides an input, and
    every parameter is an input (required ones without a default: ComfyUI always sends them)."""
    from tests import comfy_double

    comfy_double.install(monkeypatch)  # the graph refiners list ComfyUI's samplers
    for node, function in _node_functions():
        types = node.INPUT_TYPES()
        required, optional = list(types.get("required", {})), list(types.get("optional", {}))
        parameters = list(inspect.signature(function).parameters.values())[1:]
        assert not [p for p in parameters if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)], node
        assert [p.name for p in parameters] == required + optional, node.__name__
        defaulted = [p.name for p in parameters if p.default is not p.empty]
        assert set(defaulted) >= set(optional), f"{node.__name__}: optional inputs need a default"


def test_no_private_dagster_module_is_imported():
    """Dagster's `_`-modules change without notice between releases: Luna uses the public API
    only."""
    private = re.compile(r"^\s*(from|import)\s+dagster\._", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path, _ in _modules(package)
        if private.search(path.read_text())
    ]
    assert offenders == []


def test_every_module_imports():
    """A module moved or renamed leaves no import behind: each one of every package loads."""
    failed = {}
    for package in ("luna_core", "luna_assets", "luna_cli", "dagster_project", "luna_service"):
        for _, module in _modules(package):
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - every failure is reported, by module
                failed[module] = repr(exc)
    assert failed == {}


def test_no_line_is_longer_than_100_characters():
    """ruff's E501 at line length 100, and past what it lets through (a line that ends in a pragma,
    a long string): every line of every module, tests and benchmarks included, counted in UTF-8
    bytes, so that no tool counting either characters or bytes finds a longer one."""
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    long = [
        f"{name}:{number}"
        for name in files
        for number, line in enumerate((ROOT / name).read_bytes().splitlines(), start=1)
        if len(line) > 100
    ]
    assert long == []


def test_loading_the_dagster_definitions_imports_no_model_library():
    """Every run and step process loads the definitions: torch, transformers, diffusers, scipy and
    mlflow stay out until a step that needs one runs (a Celery shard pays seconds otherwise)."""
    code = (
        "import sys, dagster_project.definitions\n"
        "heavy = ('torch', 'transformers', 'diffusers', 'scipy', 'mlflow')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""
