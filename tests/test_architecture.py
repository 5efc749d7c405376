"""The import graph: no cycle, and dependencies run one way between the project's layers.

    python -m pytest tests/test_architecture.py     (no TensorFlow: it only parses the code)

Layers, lowest first (a module may import its own layer and the ones below it):
    0 feature_specs                      contracts: features, file layout, serving requests
    1 unisar_tf (config, model, losses, metrics, sasrec, layers)   the model library
    2 unisar_tf.data                     reading and counting what the data job writes
    3 unisar_tf.train                    inputs, trainer, evaluation, baselines, gate
    4 unisar_tf.export                   request mapping, signatures, push
    5 unisar_tf.tools                    ablation, benchmarks, demo
    6 pipeline, serving                  the TFX pipeline, the data job, the stand-in server
Entry points (`__main__` modules, unisar_tf.train.cli, which also exports,
unisar_tf.tools.standard_protocols, which also runs the data job, and unisar_tf.tools.sizing,
whose --calibrate --sequences measures the data job's coder, combiner and table writer) may
import any layer; nothing imports them. Every import counts, including those inside functions.
"""

import ast
import os
from typing import Dict, List, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("feature_specs", "unisar_tf", "pipeline", "serving")
LAYERS = [
    ("feature_specs",),
    ("unisar_tf",),
    ("unisar_tf.data",),
    ("unisar_tf.train",),
    ("unisar_tf.export",),
    ("unisar_tf.tools",),
    ("pipeline", "serving"),
]
ENTRY_POINTS = {
    "unisar_tf.train.cli",
    "unisar_tf.tools.standard_protocols",
    "unisar_tf.tools.sizing",
}


def project_modules() -> Dict[str, str]:
    """{dotted module name: file path} of every module of PACKAGES."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    modules[dotted.removesuffix(".__init__")] = path
    return modules


def import_graph(modules: Dict[str, str]) -> Dict[str, Set[str]]:
    """{module: project modules it imports}, `from package import submodule` resolved to the
    submodule; imports inside functions included."""
    graph = {}
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else base)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layer_of(module: str) -> int:
    """The highest layer whose prefix the module starts with."""
    best = None
    for rank, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            best = rank
    assert best is not None, module
    return best


def is_entry_point(module: str) -> bool:
    return module.endswith("__main__") or module in ENTRY_POINTS


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    """ "a -> b" for every import of a higher layer, or of an entry point, by a module that is
    not an entry point."""
    wrong = []
    for module, targets in sorted(graph.items()):
        if is_entry_point(module):
            continue
        for target in sorted(targets):
            if is_entry_point(target) or layer_of(target) > layer_of(module):
                wrong.append(
                    f"{module} (layer {layer_of(module)}) -> {target} "
                    f"(layer {layer_of(target)})"
                )
    return wrong


@pytest.fixture(scope="module")
def graph():
    return import_graph(project_modules())


def test_the_import_graph_has_no_cycle(graph):
    assert cycles(graph) == []


def test_imports_only_go_down_the_layers(graph):
    assert upward_imports(graph) == []


def test_the_checks_find_a_planted_cycle_and_an_upward_import():
    planted = {
        "unisar_tf.data.reader": {"unisar_tf.train.trainer"},
        "unisar_tf.train.trainer": {"unisar_tf.data.reader", "unisar_tf.model"},
        "unisar_tf.model": set(),
        "unisar_tf.train.__main__": {"unisar_tf.export.push"},
        "unisar_tf.export.push": {"unisar_tf.model"},
    }
    assert cycles(planted) == [["unisar_tf.data.reader", "unisar_tf.train.trainer"]]
    assert upward_imports(planted) == [
        "unisar_tf.data.reader (layer 2) -> unisar_tf.train.trainer (layer 3)"
    ]


def test_the_graph_sees_function_level_and_submodule_imports(graph):
    # pipeline/trainer_module.py imports the trainer inside run_fn, as a submodule path.
    assert "unisar_tf.train.trainer" in graph["pipeline.trainer_module"]
    # `from unisar_tf.data import reader` is an edge to the submodule, not to the package.
    assert "unisar_tf.data.reader" in graph["unisar_tf.train.inputs"]
