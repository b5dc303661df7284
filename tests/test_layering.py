"""The package layers: ``core`` stands alone, ``service`` never reaches into ``training``, and the
training library never imports its experiments (``training.experiments``: recipes that call it).

Read from the source (every import statement, at any depth), so an import inside a function
counts too.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(package: str) -> dict[str, set[str]]:
    """file -> the modules it imports, by full name."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


def imported_packages(package: str) -> dict[str, set[str]]:
    """file -> the top-level packages it imports."""
    return {path: {name.split(".")[0] for name in names} for path, names in imported_modules(package).items()}


@pytest.mark.parametrize(
    "package, forbidden", [("core", {"service", "training", "bench"}), ("service", {"training", "bench"})]
)
def test_a_layer_never_imports_the_ones_above_it(package, forbidden):
    files = imported_packages(package)
    assert len(files) >= 8
    offenders = {path: sorted(names & forbidden) for path, names in files.items() if names & forbidden}
    assert not offenders, f"{package}/ imports {offenders}"


def test_the_service_uses_the_shared_core():
    assert any("core" in names for names in imported_packages("service").values())


def test_the_training_library_never_imports_an_experiment():
    files = imported_modules("training")
    library = {path: names for path, names in files.items() if not path.startswith("training/experiments/")}
    assert len(library) >= 20 and len(files) > len(library)
    offenders = {
        path: sorted(n for n in names if n == "training.experiments" or n.startswith("training.experiments."))
        for path, names in library.items()
    }
    assert not {path: names for path, names in offenders.items() if names}, offenders


def classes_and_methods(package: str) -> tuple[set[str], set[str]]:
    """The names of the classes a package defines, and of their methods."""
    classes, methods = set(), set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                classes.add(node.name)
                methods |= {f.name for f in node.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
    return classes, methods


def test_core_names_no_service_or_training_type_even_without_importing_it():
    """Naming another layer's class, or duck-typing on its methods (``hasattr(module, "packed_tensors")``),
    couples as an import does; core states what it needs as a protocol of its own instead."""
    core_classes, core_methods = classes_and_methods("core")
    service_classes, service_methods = classes_and_methods("service")
    training_classes, training_methods = classes_and_methods("training")
    types_above = (service_classes | training_classes) - core_classes
    methods_above = (service_methods | training_methods) - core_methods
    assert {"OneDnnLinear", "MelDataset", "AdmissionGate"} <= types_above
    offenders = []
    for path in sorted((REPO / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Name | ast.Attribute)
                and (node.id if isinstance(node, ast.Name) else node.attr) in types_above
            ):
                offenders.append(f"{path.name}:{node.lineno} names {ast.unparse(node)}")
            duck = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"hasattr", "getattr"}
            )
            if (
                duck
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in methods_above
            ):
                offenders.append(f"{path.name}:{node.lineno} duck-types on {node.args[1].value!r}")
    assert not offenders, offenders
