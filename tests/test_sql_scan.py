"""No SQL is built from strings: every query in src/ is a constant or psycopg.sql."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "pgagent_watch"
EXECUTE = {"execute", "executemany", "stream", "copy"}


def _constants(tree: ast.Module) -> set[str]:
    """Names that every assignment in the file binds to a constant query."""
    good: set[str] = set()
    bad: set[str] = set()
    # Twice: a constant may be built from another one defined earlier.
    for _ in range(2):
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = (
                    node.targets if isinstance(node, ast.Assign) else [node.target]
                )
                ok = _constant(node.value, good)
                for t in targets:
                    if isinstance(t, ast.Name):
                        (good if ok else bad).add(t.id)
    return good - bad


def _constant(node: ast.expr, names: set[str]) -> bool:
    """Whether a query expression is made of literals and constants only."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str | bytes)
    if isinstance(node, ast.Name):
        return node.id in names or node.id.isupper()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _constant(node.left, names) and _constant(node.right, names)
    if isinstance(node, ast.Attribute):
        return True  # a module constant (capture.PRUNE_SQL) or a migration's text
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
        if func.attr == "format" and _is_sql(func.value):
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


def string_built_sql(source: str, filename: str) -> list[str]:
    """Every execute-like call whose query is not a constant, as file:line."""
    tree = ast.parse(source, filename)
    names = _constants(tree)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in EXECUTE
            and node.args
            and not _constant(node.args[0], names)
        ):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node.args[0])[:80]}")
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
"""
    assert len(string_built_sql(bad, "bad.py")) == 5
    good = """
from psycopg import sql
Q = "SELECT 1"
def f(conn, name):
    conn.execute("SELECT * FROM t WHERE id = %s", (1,))
    conn.execute(Q + " LIMIT 1")
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
    listen = sql.SQL("LISTEN {}").format(sql.Identifier(name))
    conn.execute(listen)
"""
    assert string_built_sql(good, "good.py") == []


def test_no_query_in_src_is_built_from_strings() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        found += string_built_sql(path.read_text(), str(path.relative_to(SRC)))
    assert found == [], "string-built SQL:\n" + "\n".join(found)
