"""No SQL is built from strings: every query in src/ is a constant or psycopg.sql."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "pgagent_watch"
EXECUTE = {"execute", "executemany", "stream", "copy"}


def _constants(tree: ast.Module) -> set[str]:
    """Names that every assignment in the file binds to a constant query."""
    good: set[str] = set()
    assigns = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
    ]
    # Until nothing changes: a constant may be built from others.
    while True:
        bad: set[str] = set()
        found: set[str] = set()
        for node in assigns:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            assert node.value is not None
            ok = _constant(node.value, good)
            for t in targets:
                if isinstance(t, ast.Name):
                    (found if ok else bad).add(t.id)
        if found - bad == good:
            return good
        good = found - bad


def _constant(node: ast.expr, names: set[str]) -> bool:
    """Whether a query expression is made of literals and constants only."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str | bytes)
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _constant(node.left, names) and _constant(node.right, names)
    if isinstance(node, ast.JoinedStr):
        # f"SELECT {_COLUMNS} ...": only constants interpolated.
        return all(
            isinstance(v, ast.Constant)
            or (
                isinstance(v, ast.FormattedValue)
                and v.conversion == -1
                and v.format_spec is None
                and _constant(v.value, names)
            )
            for v in node.values
        )
    if isinstance(node, ast.Attribute):
        # A module's constant (capture.PRUNE_SQL) or a shipped migration's text.
        return node.attr.lstrip("_").isupper() or node.attr == "sql"
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and all(isinstance(a, ast.Constant) for a in node.args)
        and not node.keywords
    ):
        return True  # a shipped script read by name: _script("capture.sql")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        func = node.func
        if func.attr == "encode" and not node.args:
            return _constant(func.value, names)
        # psycopg.sql composition: sql.SQL("...").format(sql.Identifier(...))
        if func.attr in ("format", "join") and _is_sql(func.value):
            return True
        return _is_sql(node)
    return False


def _is_sql(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "sql"
    )


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _passed_constants(
    tree: ast.Module, func: Function, param: str, names: set[str]
) -> bool:
    """Whether every call of ``func`` in the file passes a constant as ``param``."""
    params = [a.arg for a in (*func.args.posonlyargs, *func.args.args)]
    index = params.index(param) if param in params else None
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == func.name)
            or (isinstance(node.func, ast.Attribute) and node.func.attr == func.name)
        )
    ]
    if not calls:
        return False
    for call in calls:
        given = [k.value for k in call.keywords if k.arg == param]
        if not given and index is not None and index < len(call.args):
            given = [call.args[index]]
        if not given or not _constant(given[0], names):
            return False
    return True


def exported_constants(source: str) -> set[str]:
    """The UPPER_CASE constant queries a module defines, for its importers."""
    return {n for n in _constants(ast.parse(source)) if n.lstrip("_").isupper()}


def string_built_sql(
    source: str, filename: str, exported: set[str] | None = None
) -> list[str]:
    """Every execute-like call whose query is not a constant, as file:line.

    A query that is a parameter of the enclosing function passes when every
    call of that function in the same file gives a constant; a name imported
    from another module passes when that module defines it as a constant
    (``exported``: every module's ``exported_constants``).
    """
    tree = ast.parse(source, filename)
    names = _constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name in (exported or set()):
                    names.add(alias.asname or alias.name)
    enclosing: dict[ast.AST, Function] = {}
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(func):
                enclosing[inner] = func
    found = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in EXECUTE
            and node.args
        ):
            continue
        query = node.args[0]
        if _constant(query, names):
            continue
        func = enclosing.get(node)
        if (
            isinstance(query, ast.Name)
            and func is not None
            and query.id in {a.arg for a in (*func.args.posonlyargs, *func.args.args)}
            and _passed_constants(tree, func, query.id, names)
        ):
            continue
        found.append(f"{filename}:{node.lineno}: {ast.unparse(query)[:80]}")
    return found


def test_the_scan_flags_string_built_sql() -> None:
    bad = """
def f(conn, job_id, table):
    conn.execute(f"SELECT * FROM t WHERE id = {job_id}")
    conn.execute("SELECT * FROM t WHERE id = %s" % job_id)
    conn.execute("SELECT * FROM {}".format(table))
    conn.execute("SELECT * FROM " + table)
    query = f"SELECT {table}"
    conn.execute(query)
    conn.execute(f"SELECT {table!r}")
def g(conn, query):
    conn.execute(query)
def h(conn, table):
    g(conn, "SELECT 1")
    g(conn, query="SELECT " + table)
"""
    assert len(string_built_sql(bad, "bad.py")) == 7
    good = """
from psycopg import sql
Q = "SELECT 1"
def f(conn, name):
    conn.execute("SELECT * FROM t WHERE id = %s", (1,))
    conn.execute(Q + " LIMIT 1")
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
    listen = sql.SQL("LISTEN {}").format(sql.Identifier(name))
    conn.execute(listen)
    conn.execute(f"SELECT {Q} WHERE true")
def run(conn, query, params):
    conn.execute(query, params)
def caller(conn):
    run(conn, Q, ())
    run(conn, query=Q + " LIMIT 2", params=())
"""
    assert string_built_sql(good, "good.py") == []


def test_no_query_in_src_is_built_from_strings() -> None:
    sources = {path: path.read_text() for path in sorted(SRC.rglob("*.py"))}
    exported = set().union(*(exported_constants(s) for s in sources.values()))
    found = []
    for path, source in sources.items():
        found += string_built_sql(source, str(path.relative_to(SRC)), exported)
    assert found == [], "string-built SQL:\n" + "\n".join(found)
