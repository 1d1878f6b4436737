"""Size limits of the library's code: no function or method over 60 lines and no module over 700
lines in dualnet/, outside dualnet/book/ (which keeps the book's module paths and script shapes);
and tests that explain themselves without citing issue numbers, which a reader does not have.

A function's length is ``end_lineno - lineno + 1`` of its ``def`` (docstring and comments
included, decorators not); a module's is its number of lines.
"""
import ast
import pathlib
import re
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "dualnet"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 700


def library_files():
    """Every module of dualnet/ that the limits cover (dualnet/book/ is left out)."""
    return [f for f in sorted(PKG.rglob("*.py")) if f.relative_to(PKG).parts[0] != "book"]


def function_lengths(tree, prefix=""):
    """{qualified name: lines} of every function and method in ``tree``, nested ones included
    (``Class.method``, ``outer.inner``); a name defined twice keeps its longest definition."""
    out = {}
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + node.name
            if not isinstance(node, ast.ClassDef):
                out[name] = max(out.get(name, 0), node.end_lineno - node.lineno + 1)
            inner = function_lengths(node, name + ".")
        else:
            inner = function_lengths(node, prefix)   # defs under if/try/with at this level
        for k, n in inner.items():
            out[k] = max(out.get(k, 0), n)
    return out


def library_functions():
    """{"dualnet/<path>:<qualified name>": lines} over :func:`library_files`."""
    out = {}
    for f in library_files():
        rel = f.relative_to(ROOT).as_posix()
        for name, n in function_lengths(ast.parse(f.read_text())).items():
            out[f"{rel}:{name}"] = n
    return out


def test_the_measure_counts_functions_methods_and_nested_ones():
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    src = textwrap.dedent("""\
        def short():
            return 1

        class A:
            def method(self):
        {body}
                return 0

            if True:
                def guarded(self):
                    def inner():
                        pass
        """).format(body=textwrap.indent(body, "    "))
    lengths = function_lengths(ast.parse(src))
    assert lengths == {"short": 2, "A.method": 61, "A.guarded": 3, "A.guarded.inner": 2}


def test_the_scan_covers_the_library_and_leaves_out_only_the_book():
    files = {f.relative_to(PKG).as_posix() for f in library_files()}
    assert {"functions.py", "layers/base.py", "conv/rows.py", "backend/device.py", "cli.py"} <= files
    assert not any(f.startswith("book/") for f in files) and (PKG / "book").is_dir()
    assert library_functions()["dualnet/functions.py:im2col"] > 1


def test_no_function_over_60_lines():
    too_long = {k: n for k, n in library_functions().items() if n > MAX_FUNCTION_LINES}
    assert too_long == {}, f"functions over {MAX_FUNCTION_LINES} lines: cut them into named pieces"


def test_no_module_over_700_lines():
    too_long = {f.relative_to(ROOT).as_posix(): n for f in library_files()
                if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}, f"modules over {MAX_MODULE_LINES} lines: split them by job"


def test_no_test_cites_an_issue_number():
    cites = re.compile(r"\bissues?\s*#?\s*\d+", re.I)
    # (the samples are built, so that this file does not cite one itself)
    assert cites.search("as issue %d says" % 11) and cites.search("Issues #%d" % 3) and not cites.search("the issue")
    offenders = [f"{f.name}:{i}" for f in sorted((ROOT / "tests").glob("*.py"))
                 for i, line in enumerate(f.read_text().splitlines(), 1) if cites.search(line)]
    assert offenders == []
