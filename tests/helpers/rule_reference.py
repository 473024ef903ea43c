"""A plain Python reference for content rules (EventBridge event patterns), written
from the semantics table in docs/routing.md, for the property tests of the Rust
matcher (tests/test_rules.py). Slow and simple on purpose: the wildcard is a
regex, nothing is precompiled.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

MISSING = object()


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _glob(pattern: str, s: str) -> bool:
    parts, i = [], 0
    lit = ""
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            lit += pattern[i + 1]
            i += 2
            continue
        if c == "*":
            parts.append(re.escape(lit))
            parts.append(".*")
            lit = ""
        else:
            lit += c
        i += 1
    parts.append(re.escape(lit))
    return re.fullmatch("".join(parts), s, flags=re.S) is not None


def _text(op: Any, s: str, how: str) -> bool:
    if isinstance(op, dict):
        t = op["equals-ignore-case"].lower()
        s = s.lower()
    else:
        t = op
    return s.startswith(t) if how == "prefix" else s.endswith(t)


def _exact(want: Any, v: Any) -> bool:
    if want is None or isinstance(want, bool):
        return v is want or (isinstance(v, bool) and v == want and isinstance(want, bool))
    if _is_num(want):
        return _is_num(v) and float(v) == float(want)
    return isinstance(v, str) and v == want


def _matcher(m: Any, v: Any) -> bool:
    """A present, non-array value against one matcher."""
    if not isinstance(m, dict):
        return _exact(m, v)
    ((op, arg),) = m.items()
    if op in ("prefix", "suffix"):
        return isinstance(v, str) and _text(arg, v, op)
    if op == "equals-ignore-case":
        return isinstance(v, str) and v.lower() == arg.lower()
    if op == "wildcard":
        return isinstance(v, str) and _glob(arg, v)
    if op == "exists":
        return arg is True
    if op == "numeric":
        if not _is_num(v):
            return False
        x = float(v)
        ok = True
        for o, b in zip(arg[::2], arg[1::2], strict=True):
            ok &= {"<": x < b, "<=": x <= b, "=": x == b, ">": x > b, ">=": x >= b}[o]
        return ok
    if op == "cidr":
        try:
            return isinstance(v, str) and ipaddress.ip_address(v) in ipaddress.ip_network(
                arg, strict=False
            )
        except ValueError:
            return False
    if op == "anything-but":
        if isinstance(v, dict):
            return False
        if isinstance(arg, dict):
            ((k, x),) = arg.items()
            if not isinstance(v, str):
                return True
            if k == "prefix":
                return not v.startswith(x)
            if k == "suffix":
                return not v.endswith(x)
            xs = x if isinstance(x, list) else [x]
            if k == "equals-ignore-case":
                return v.lower() not in [y.lower() for y in xs]
            return not any(_glob(y, v) for y in xs)
        xs = arg if isinstance(arg, list) else [arg]
        return not any(_exact(y, v) for y in xs)
    raise AssertionError(f"unknown operator {op}")


def _leaf(matchers: list[Any], value: Any) -> bool:
    if value is MISSING or (isinstance(value, list) and not value):
        return any(m == {"exists": False} for m in matchers)
    values = value if isinstance(value, list) else [value]
    return any(_matcher(m, v) for v in values for m in matchers)


def matches(rule: dict[str, Any], doc: Any) -> bool:
    """Whether ``doc`` (a JSON document) matches ``rule`` (a valid rule)."""
    if not isinstance(doc, dict):
        doc = {}
    for key, pat in rule.items():
        if key == "$or":
            if not any(matches(alt, doc) for alt in pat):
                return False
            continue
        value = doc.get(key, MISSING)
        if isinstance(pat, dict):
            if isinstance(value, list):
                ok = any(isinstance(v, dict) and matches(pat, v) for v in value)
            else:
                ok = matches(pat, value if isinstance(value, dict) else {})
        else:
            ok = _leaf(pat, value)
        if not ok:
            return False
    return True
