"""Architecture rules for src/fluidmargin, read from the source with ``ast`` (nothing is imported).

- no runtime import cycle: every import statement counts, module-level and inside functions (a lazy import
  only hides a cycle), except those under ``if TYPE_CHECKING:``;
- every function-local ``fluidmargin`` import carries a short comment saying why it is lazy;
- no access to another module's underscore-prefixed names (``from m import _x``, ``obj._x``);
- no source file over 800 lines.

Each checker takes a source root, so the first half of this file shows on small synthetic trees that it
can fail; the second half runs it on the real tree.
"""

from __future__ import annotations

import ast
import io
import itertools
import re
import tokenize
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fluidmargin"
MAX_LINES = 800
TEXT_SUFFIXES = {".py", ".js", ".html", ".css"}


# --- the source tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. fluidmargin.engine.engine (a package's __init__ is the package's name)
    path: Path
    tree: ast.Module
    text: str


@cache
def load(root: Path) -> dict[str, Module]:
    """Every module under ``root`` (a package directory), by dotted name."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        text = path.read_text()
        out[".".join(parts)] = Module(".".join(parts), path, ast.parse(text, str(path)), text)
    return out


def _rel(m: Module, root: Path) -> str:
    return m.path.relative_to(root.parent).as_posix()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, lazy: bool = False, typing_only: bool = False) -> Iterator[tuple[ast.AST, bool, bool]]:
    """Every node under ``node`` with (inside a function or lambda, inside an ``if TYPE_CHECKING:`` body)."""
    todo = [(child, lazy, typing_only) for child in reversed(list(ast.iter_child_nodes(node)))]
    while todo:
        n, lz, tc = todo.pop()
        yield n, lz, tc
        if isinstance(n, ast.If) and _is_type_checking(n.test):
            todo.extend((c, lz, tc) for c in reversed(n.orelse))
            todo.extend((c, lz, True) for c in reversed(n.body))
            continue
        lz = lz or isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        todo.extend((c, lz, tc) for c in reversed(list(ast.iter_child_nodes(n))))


# --- imports and the module graph ------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the fluidmargin module it loads
    file: str
    line: int
    end_line: int
    lazy: bool  # inside a function (runs on first call, not at import)
    typing_only: bool  # under `if TYPE_CHECKING:` (never runs)
    via_package: bool = False  # the target's package __init__, loaded on the way to the named module


def _existing(name: str, mods: dict[str, Module]) -> str | None:
    """``name`` or its longest prefix that is a module here (``pkg.mod.Class`` -> ``pkg.mod``)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in mods:
            return ".".join(parts)
        parts.pop()
    return None


def _dynamic_import(node: ast.Call) -> str | None:
    """The literal module of ``__import__("x")`` / ``importlib.import_module("x")``."""
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    if name in ("__import__", "import_module") and node.args:
        a = node.args[0]
        if isinstance(a, ast.Constant) and isinstance(a.value, str):
            return a.value
    return None


@cache
def imports(root: Path) -> tuple[Import, ...]:
    """Every import of a module under ``root``, resolved to the modules it loads."""
    mods = load(root)
    pkg = root.name
    out = []
    for m in mods.values():
        is_pkg = m.path.name == "__init__.py"
        here = m.name if is_pkg else m.name.rpartition(".")[0]
        for node, lazy, typing_only in _walk(m.tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in mods else base)
            elif isinstance(node, ast.Call) and (dyn := _dynamic_import(node)):
                targets = [dyn]
            else:
                continue
            for t in targets:
                if not (t == pkg or t.startswith(pkg + ".")) or (target := _existing(t, mods)) is None:
                    continue
                line, end = node.lineno, node.end_lineno or node.lineno
                out.append(Import(m.name, target, _rel(m, root), line, end, lazy, typing_only))
                # loading pkg.sub.mod runs pkg.sub's __init__ first, unless the importer is inside pkg.sub
                parts = target.split(".")
                for i in range(1, len(parts)):
                    anc = ".".join(parts[:i])
                    inside = m.name == anc or m.name.startswith(anc + ".")
                    if anc in mods and not inside:
                        out.append(Import(m.name, anc, _rel(m, root), line, end, lazy, typing_only, True))
    return tuple(out)


@cache
def import_graph(root: Path) -> dict[str, dict[str, Import]]:
    """importer -> target -> the import that makes the edge (module-level preferred), runtime imports only.

    A module importing itself (``cli/main.py`` under ``__main__``) is not an edge."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in load(root)}
    for imp in sorted(imports(root), key=lambda i: (i.lazy, i.via_package, i.line)):
        if not imp.typing_only and imp.target != imp.importer:
            graph[imp.importer].setdefault(imp.target, imp)
    return graph


def _components(graph: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_cycles(root: Path) -> list[list[str]]:
    """Cycles of runtime imports, each as a path ``[a, b, ..., a]``: for every import edge that lies on a
    cycle, the shortest cycle through it (so each import to break appears at least once)."""
    graph = import_graph(root)
    found: set[tuple[str, ...]] = set()
    for comp in _components(graph):
        for u in sorted(comp):
            for v in sorted(graph[u]):
                if v not in comp:
                    continue
                prev: dict[str, str] = {v: v}
                todo = deque([v])
                while todo and u not in prev:
                    x = todo.popleft()
                    for y in sorted(graph[x]):
                        if y in comp and y not in prev:
                            prev[y] = x
                            todo.append(y)
                path = [u]
                while path[-1] != v:
                    path.append(prev[path[-1]])
                cyc = [u, *reversed(path)]  # u -> v -> ... -> u
                ring = cyc[:-1]
                k = ring.index(min(ring))
                found.add(tuple([*ring[k:], *ring[:k], ring[k]]))
    return sorted((list(c) for c in found), key=lambda c: (len(c), c))


def describe_cycle(root: Path, cycle: list[str]) -> str:
    graph = import_graph(root)
    hops = []
    for a, b in itertools.pairwise(cycle):
        imp = graph[a][b]
        how = ", lazy" if imp.lazy else ""
        how += ", its package __init__" if imp.via_package else ""
        hops.append(f"    {a} -> {b}  ({imp.file}:{imp.line}{how})")
    return " -> ".join(cycle) + "\n" + "\n".join(hops)


# --- lazy imports say why ------------------------------------------------------------------------------

_DIRECTIVE = re.compile(
    r"noqa(:\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*)?|type:\s*ignore(\[[^\]]*\])?|pragma:[^#]*|fmt:\s*\w+"
)


_BLOCK_HEADER = re.compile(r"\s*(if|elif|else|try|with|for|while)\b.*:\s*(#.*)?$")


@cache
def _comments(text: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _says_why(comment: str) -> bool:
    """A comment with words in it besides tool directives (``# noqa: F401`` alone says nothing)."""
    return bool(re.search(r"\w", _DIRECTIVE.sub("", comment)))


def uncommented_lazy_imports(root: Path) -> list[Import]:
    """Function-local imports of the package without a comment on the statement or on the lines just above."""
    mods = {m.name: m for m in load(root).values()}
    out = []
    seen: set[tuple[str, int]] = set()
    for imp in imports(root):
        if not imp.lazy or imp.typing_only or imp.via_package or (imp.file, imp.line) in seen:
            continue
        seen.add((imp.file, imp.line))
        m = mods[imp.importer]
        comments = _comments(m.text)
        lines = m.text.splitlines()
        said = [comments.get(n, "") for n in range(imp.line, imp.end_line + 1)]
        n = imp.line - 1  # the comment lines just above, through the headers of enclosing if/try/with blocks
        while n >= 1 and (lines[n - 1].lstrip().startswith("#") or _BLOCK_HEADER.match(lines[n - 1])):
            said.append(comments.get(n, ""))
            n -= 1
        if not any(_says_why(c) for c in said):
            out.append(imp)
    return sorted(out, key=lambda i: (i.file, i.line))


# --- underscore names stay in their module -----------------------------------------------------------


def _private(name: str) -> bool:
    """Underscore-prefixed, but not a dunder (``__init__``) or a reserved sunder (``_missing_``)."""
    return name.startswith("_") and not name.endswith("_")


def _self_like(e: ast.expr) -> bool:
    """``self``, ``cls``, ``super()``, ``type(self)``, ``self.__class__``: the object's own class."""
    if isinstance(e, ast.Name):
        return e.id in ("self", "cls")
    if isinstance(e, ast.Call) and isinstance(e.func, ast.Name):
        return e.func.id == "super" or (e.func.id == "type" and len(e.args) == 1 and _self_like(e.args[0]))
    return isinstance(e, ast.Attribute) and e.attr == "__class__" and _self_like(e.value)


def _scope_names(body: list[ast.stmt]) -> Iterator[str]:
    """Names bound directly in a module or class body (not inside its functions or nested classes)."""
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue  # (their names are collected by ``definitions``)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.split(".")[0]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            yield from (
                c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
        todo.extend(ast.iter_child_nodes(node))


@cache
def definitions(root: Path) -> dict[str, frozenset[str]]:
    """Per module, the names it defines: functions, classes, methods, module globals, class attributes,
    ``self._x = ...`` / ``cls._x = ...`` attributes and ``__slots__`` entries."""
    out = {}
    for m in load(root).values():
        names = set(_scope_names(m.tree.body))
        for node in ast.walk(m.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(_scope_names(node.body))
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _self_like(node.value):
                names.add(node.attr)
        out[m.name] = frozenset(names)
    return out


@dataclass(frozen=True, order=True)
class Reach:
    file: str
    line: int
    name: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.name} ({self.why})"


def _named_access(node: ast.AST) -> tuple[str, ast.expr, int] | None:
    """(name, object, line) of ``obj.name`` and of ``getattr(obj, "name")`` (setattr, hasattr, delattr)."""
    if isinstance(node, ast.Attribute):
        return node.attr, node.value, node.lineno
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        return node.args[1].value, node.args[0], node.lineno
    return None


def private_reaches(root: Path) -> list[Reach]:
    """Each use of another module's underscore name: ``from m import _x`` (m a module of the package,
    TYPE_CHECKING blocks included) and ``expr._x`` / ``getattr(expr, "_x")`` where ``expr`` is not the object's
    own class and ``_x`` is not defined in this module but is defined in another one of the package (so private
    names of the standard library and third parties are out of scope)."""
    mods = load(root)
    defs = definitions(root)
    owners: dict[str, set[str]] = {}
    for mod, names in defs.items():
        for n in names:
            if _private(n):
                owners.setdefault(n, set()).add(mod)
    out = []
    for m in mods.values():
        where = _rel(m, root)
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and _existing(node.module or "", mods):
                for a in node.names:
                    if _private(a.name) and node.module != m.name:
                        out.append(Reach(where, node.lineno, a.name, f"from {node.module} import {a.name}"))
            elif (use := _named_access(node)) is not None:
                name, obj, line = use
                if _private(name) and not _self_like(obj) and name not in defs[m.name] and name in owners:
                    out.append(Reach(where, line, name, f"defined in {', '.join(sorted(owners[name]))}"))
    return sorted(out)


# --- file length -------------------------------------------------------------------------------------


def long_files(root: Path, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
            n = len(path.read_text().splitlines())
            if n > limit:
                out.append((path.relative_to(root.parent).as_posix(), n))
    return out


# --- the checkers fail when they should (synthetic trees) ----------------------------------------------


def _tree(base: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` under ``base`` holding ``files`` (an empty ``__init__.py`` wherever one is missing)."""
    for rel, text in files.items():
        p = base / "pkg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in [base / "pkg", *(base / "pkg").rglob("*")]:
        if d.is_dir() and not (d / "__init__.py").exists():
            (d / "__init__.py").write_text("")
    return base / "pkg"


def test_a_cycle_hidden_by_a_lazy_import_is_found(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "a.py": "from pkg.b import g\n",
            "b.py": "def g():\n    from pkg.a import f  # lazy: a imports this module\n    return f\n",
            "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n",
            "d.py": "from pkg.c import x\n",
        },
    )
    assert import_cycles(root) == [["pkg.a", "pkg.b", "pkg.a"]]
    text = describe_cycle(root, ["pkg.a", "pkg.b", "pkg.a"])
    assert "pkg/a.py:1" in text and "pkg/b.py:2, lazy" in text


def test_type_checking_imports_and_self_imports_are_no_cycle(tmp_path: Path) -> None:
    a = "import pkg.b\nif __name__ == '__main__':\n    from pkg.a import f\n"
    b = "import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import f\nelse:\n    f = None\n"
    assert import_cycles(_tree(tmp_path / "1", {"a.py": a, "b.py": b})) == []
    b = "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    import pkg.a\n"  # the else branch runs
    assert import_cycles(_tree(tmp_path / "2", {"a.py": a, "b.py": b})) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_package_inits_and_from_package_imports_are_edges(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            # the package re-exports a submodule that imports a name from the package: a cycle
            "eng/__init__.py": "from pkg.eng.core import Engine\n",
            "eng/core.py": "from pkg.eng import helpers\nfrom pkg.eng import Engine as E\n",
            "eng/helpers.py": "X = 1\n",
            "eng/rel.py": "from . import helpers\nfrom ..user import Y\n",  # relative imports resolve too
            # reaching pkg.sub.leaf runs pkg/sub/__init__, which imports the importer back
            "sub/__init__.py": "from pkg.user import Y\n",
            "sub/leaf.py": "Z = 1\n",
            "user.py": "Y = 2\ndef f():\n    import pkg.sub.leaf  # lazy: test\n",
            # __import__ with a literal counts too
            "dyn.py": "make = lambda: __import__('pkg.dyn2').x\n",
            "dyn2.py": "from pkg import dyn\n",
        },
    )
    graph = import_graph(root)
    assert set(graph["pkg.eng.core"]) == {"pkg.eng.helpers", "pkg.eng"}
    assert set(graph["pkg.eng.rel"]) == {"pkg.eng.helpers", "pkg.user"}
    assert graph["pkg.user"]["pkg.sub"].via_package
    assert import_cycles(root) == [
        ["pkg.dyn", "pkg.dyn2", "pkg.dyn"],
        ["pkg.eng", "pkg.eng.core", "pkg.eng"],
        ["pkg.sub", "pkg.user", "pkg.sub"],
    ]


def test_lazy_imports_must_say_why(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "m.py": (
                "import json\n"
                "def a():\n    from pkg import n\n"  # uncommented: line 3
                "def b():\n    from pkg import n  # lazy: keeps --help fast\n"
                "def c():\n    # lazy: the optional driver\n    from pkg import n\n"
                "def d():\n    from pkg import (  # noqa: F401\n        n,\n    )\n"  # a directive only: line 10
                "def e():\n    from pkg import (  # noqa: F401  (registers commands)\n        n,\n    )\n"
                "def f():\n    import json\n"  # not the package's
                "class K:\n    from pkg import n\n"  # a class body runs at import: not lazy
                "def g(x):\n    # lazy: the optional driver\n    if x:\n        from pkg import n\n"
                "# a section\ndef h():\n    from pkg import n\n"  # uncommented: line 27
            ),
            "n.py": "",
        },
    )
    assert [(i.file, i.line) for i in uncommented_lazy_imports(root)] == [
        ("pkg/m.py", 3),
        ("pkg/m.py", 10),
        ("pkg/m.py", 27),
    ]


def test_underscore_reaches_into_other_modules_are_found(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "a.py": (
                "import numpy as np\n"
                "_LIMIT = 3\n"
                "def _helper(): ...\n"
                "class A:\n"
                "    __slots__ = ('_slot',)\n"
                "    _kind = 1\n"
                "    def __init__(self):\n        self._x = 0\n"
                "    def _m(self):\n        return self._x + self._slot + super()._m() + type(self)._kind\n"
                "    def same(self, other):\n        return other._x + np._private_np + np.__name__\n"
            ),
            "b.py": (
                "from pkg.a import A, _helper\n"  # line 1
                "import pkg.a as amod\n"
                "def f(a):\n"
                "    a._x = 1\n"  # line 4
                "    return a._m() + amod._LIMIT + getattr(a, '_slot') + a._missing_ + a._unknown\n"  # line 5
                "class B(A):\n"
                "    def g(self):\n        return self._x + self._kind\n"
            ),
            "c.py": (
                "class C:\n    def __init__(self):\n        self._x = 1\n    def h(self, o):\n        return o._x\n"
            ),
        },
    )
    assert [str(r) for r in private_reaches(root)] == [
        "pkg/b.py:1 _helper (from pkg.a import _helper)",
        "pkg/b.py:4 _x (defined in pkg.a, pkg.c)",
        "pkg/b.py:5 _LIMIT (defined in pkg.a)",
        "pkg/b.py:5 _m (defined in pkg.a)",
        "pkg/b.py:5 _slot (defined in pkg.a)",
    ]


def test_long_files_are_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"ok.py": "x = 1\n" * 800, "long.py": "x = 1\n" * 801, "static/app.js": "//\n" * 900})
    assert long_files(root) == [("pkg/long.py", 801), ("pkg/static/app.js", 900)]


# --- the real tree -------------------------------------------------------------------------------------


def _grouped(items: list[tuple[str, str]]) -> str:
    by_file: dict[str, list[str]] = {}
    for f, what in items:
        by_file.setdefault(f, []).append(what)
    return "\n".join(f"{f} ({len(v)}):\n" + "\n".join(f"    {w}" for w in v) for f, v in by_file.items())


def test_the_reader_sees_the_whole_tree() -> None:
    graph = import_graph(SRC)
    assert len(graph) > 50
    assert sum(len(v) for v in graph.values()) > 200
    assert any(t.startswith("fluidmargin.engine.") for t in graph["fluidmargin.engine"])  # __init__ re-exports


def test_no_runtime_import_cycle() -> None:
    cycles = import_cycles(SRC)
    assert not cycles, f"{len(cycles)} import cycle(s), each import on one shown once at least:\n" + "\n".join(
        describe_cycle(SRC, c) for c in cycles
    )


def test_function_local_imports_say_why_they_are_lazy() -> None:
    bad = uncommented_lazy_imports(SRC)
    assert not bad, (
        f"{len(bad)} function-local fluidmargin import(s) without a comment saying why they are lazy "
        "(e.g. `# lazy: keeps `fluidmargin --help` fast`); one that dodges an import cycle should move up instead:\n"
        + _grouped([(i.file, f"line {i.line}: {i.target}") for i in bad])
    )


def test_no_access_to_another_modules_underscore_names() -> None:
    bad = private_reaches(SRC)
    assert not bad, f"{len(bad)} use(s) of another module's underscore name:\n" + _grouped(
        [(r.file, f"line {r.line}: {r.name} ({r.why})") for r in bad]
    )


def test_no_source_file_over_800_lines() -> None:
    bad = long_files(SRC)
    assert not bad, f"files over {MAX_LINES} lines:\n" + "\n".join(f"    {f}: {n}" for f, n in bad)
