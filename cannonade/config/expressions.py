"""Cut expressions over catalogue columns, parsed by a restricted parser (never ``eval``).

An expression is a small subset of Python over column names::

    snrz >= 30
    (chi2_cannon < 4) & (flag_cannon == 0)
    (ASPCAPFLAG & 10420224) == 0          # bit cut: none of bits 16-20, 23 set (Nandakumar+2022 §3.2)
    abs(chi2_sp - 2) <= 1 and not flag_sp

``and``/``or``/``not`` are logical. ``&``, ``|``, ``^``, ``~``, ``<<``, ``>>`` are bitwise on integer
columns and constants (logical on booleans, which is what ``(a < 1) & (b > 2)`` means); on float
columns they are an error naming the expression. Attribute access, subscripts, calls other than
the few functions below, names with double underscores, lambdas and comprehensions are refused,
and so are cuts longer than :data:`MAX_LENGTH` characters or nested deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import ast

import numpy as np

from cannonade.exceptions import ColumnError, ConfigError
from cannonade.tables import colnames, mask_sentinels, suggest

FUNCTIONS = {"abs": np.abs, "log10": np.log10, "sqrt": np.sqrt, "isfinite": np.isfinite}
#: the longest cut accepted (characters) and its deepest nesting: a cut is a line of a config, and
#: Python's parser gives a MemoryError or RecursionError on thousands of nested operators
MAX_LENGTH = 1000
MAX_DEPTH = 100

_ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Load, ast.Constant,
    ast.And, ast.Or, ast.Not, ast.BitAnd, ast.BitOr, ast.BitXor, ast.Invert, ast.LShift, ast.RShift,
    ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod,
    ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Call,
)
_ARITHMETIC = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
               ast.Pow: np.power, ast.Mod: np.mod}
_BITWISE = {ast.BitAnd: np.bitwise_and, ast.BitOr: np.bitwise_or, ast.BitXor: np.bitwise_xor,
            ast.LShift: np.left_shift, ast.RShift: np.right_shift}
_COMPARE = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
            ast.Eq: np.equal, ast.NotEq: np.not_equal}


def expression_names(expr, where="expression"):
    """Column names used by a cut expression; ConfigError if it is not of the safe subset.

    Parameters
    ----------
    expr : str
    where : str
        Where the expression comes from (e.g. ``'cuts.target'``), for the message.

    Returns
    -------
    set of str
    """
    if not isinstance(expr, str):
        raise ConfigError(f"{where}: a cut must be a string, got {expr!r}")
    if len(expr) > MAX_LENGTH:
        raise ConfigError(f"{where}: a cut of {len(expr)} characters ({expr[:40]!r}...) is longer than the {MAX_LENGTH} allowed")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{where}: cannot parse {expr!r}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # a NUL byte; nesting beyond the parser's stack
        raise ConfigError(f"{where}: cannot parse {expr!r}: {type(exc).__name__} {exc}".rstrip()) from None
    stack = [(tree, 1)]
    while stack:  # iteratively: evaluating a deeper tree would exhaust the recursion limit
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: {expr!r} is nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ConfigError(f"{where}: {expr!r} uses {type(node).__name__}, which cuts may not use")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise ConfigError(f"{where}: {expr!r} calls an unknown function; allowed: {sorted(FUNCTIONS)}")
        elif isinstance(node, ast.Name):
            if "__" in node.id:
                raise ConfigError(f"{where}: {expr!r} uses the name {node.id!r}; double-underscore names are refused")
            names.add(node.id)
        elif isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, bool)):
            raise ConfigError(f"{where}: {expr!r} uses the constant {node.value!r}; only numbers are allowed")
    return names - set(FUNCTIONS)


def resolve_column(name, columns, aliases=None, what="catalogue"):
    """The catalogue column a name refers to (directly or through an alias); ColumnError if none."""
    aliases = aliases or {}
    if name in aliases:
        target = aliases[name]
        if target in columns:
            return target
        raise ColumnError(f"alias {name!r} -> {target!r}: no column {target!r} in the {what}; columns are {sorted(columns)}")
    if name in columns:
        return name
    raise ColumnError(f"unknown column {name!r} in the {what}{suggest(name, columns)}; columns are {sorted(columns)}")


def _bitwise(op, a, b, expr, what):
    for v in (a, b):
        if np.asarray(v).dtype.kind not in "biu":
            raise ConfigError(f"{what}: {expr!r}: bitwise {type(op).__name__} needs integer or boolean operands, "
                              f"got {np.asarray(v).dtype}; use 'and'/'or' for logic on comparisons")
    return _BITWISE[type(op)](a, b)


def evaluate_cut(expr, table, aliases=None, what="catalogue"):
    """Evaluate a cut expression over table columns.

    Parameters
    ----------
    expr : str
    table : astropy Table or pandas DataFrame
    aliases : dict, optional
        Name used in the expression -> the table's column.
    what : str
        The table's name, for messages.

    Returns
    -------
    (n_rows,) bool
        Rows passing the cut. A masked cell fails every cut; survey sentinels (≤ −9998) in
        float columns are NaN, and a comparison with NaN is False.
    """
    names = expression_names(expr, what)
    cols = colnames(table)
    env = {}
    missing = np.zeros(len(table), dtype=bool)  # a masked cell never passes
    for n in names:
        col = table[resolve_column(n, cols, aliases, what)]
        if hasattr(col, "to_numpy"):  # pandas
            missing |= np.asarray(col.isna())
            values = col.to_numpy()
        else:
            missing |= np.asarray(np.ma.getmaskarray(col))
            values = np.asarray(np.ma.getdata(col))
        if values.dtype.kind == "f":
            values = mask_sentinels(values)
        env[n] = values

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.BoolOp):
            vals = [np.asarray(ev(v), dtype=bool) for v in node.values]
            reduce = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = vals[0]
            for v in vals[1:]:
                out = reduce(out, v)
            return out
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand)
            if isinstance(node.op, ast.Invert):
                return _bitwise(ast.BitXor(), v, np.asarray(True) if np.asarray(v).dtype.kind == "b" else np.asarray(-1), expr, what)
            return {ast.Not: np.logical_not, ast.USub: np.negative, ast.UAdd: np.positive}[type(node.op)](v)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if type(node.op) in _BITWISE:
                return _bitwise(node.op, a, b, expr, what)
            return _ARITHMETIC[type(node.op)](a, b)
        if isinstance(node, ast.Compare):
            left, out = ev(node.left), None
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                r = _COMPARE[type(op)](left, right)
                out = r if out is None else np.logical_and(out, r)
                left = right
            return out
        if isinstance(node, ast.Call):
            return FUNCTIONS[node.func.id](*[ev(a) for a in node.args])
        raise ConfigError(f"{what}: unsupported expression {expr!r}")  # pragma: no cover

    try:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            result = np.asarray(ev(ast.parse(expr, mode="eval")), dtype=bool)
    except ConfigError:
        raise
    except (ArithmeticError, ValueError, TypeError) as exc:  # e.g. 9**9**9 on integers: a negative power
        raise ConfigError(f"{what}: cannot evaluate {expr!r}: {exc}") from None
    return np.broadcast_to(result, (len(table),)) & ~missing
