"""The shape of the code (issue 28): no import cycle, no function over 60 lines, the web app independent of the
CLI. These read the source with ``ast``, so they see function-level imports too (a cycle hidden inside a
function is still a cycle: the two modules cannot be understood, or tested, apart)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return mods


def _imported(node: ast.AST, package: str, mods: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        # `from pkg import sub` imports the submodule when there is one, else a name from pkg itself
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args \
            and isinstance(node.args[0], ast.Constant):
        return [node.args[0].value]
    return []


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body (``if TYPE_CHECKING:`` blocks excepted)."""
    mods = _modules()
    graph = {}
    for name, (path, is_package) in mods.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
                node.body = []
        package = name if is_package else name.rpartition(".")[0]
        graph[name] = {t for node in ast.walk(tree) for t in _imported(node, package, mods) if t in mods and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    # weakground.cli.train imports the driver only inside run(): the edge must still be there
    assert "weakground.engine.driver" in graph["weakground.cli.train"]
    assert len(graph) > 60


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_web_app_imports_nothing_from_the_cli():
    graph = import_graph()
    serve = [m for m in graph if m.startswith("weakground.serve")]
    assert serve and not any(t.startswith("weakground.cli") for m in serve for t in graph[m])


def test_no_function_over_sixty_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)
