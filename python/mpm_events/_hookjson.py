"""``loads``/``dumps`` for the hook process: the ``json`` module's own C scanner and
encoder (``_json``), without importing ``json``.

``import json`` imports ``re`` (for its whitespace and number patterns), which imports
``enum``, ``functools`` and ``collections``: 5-10 ms of a hook process whose whole
budget is 60 ms (W10). ``_json`` is built into CPython and is what ``json`` itself
runs on, so :func:`loads` and :func:`dumps` give exactly what ``json.loads`` and
``json.dumps(..., sort_keys=..., default=...)`` give. When ``_json`` is missing or
refuses the arguments (another Python), both fall back to ``json``; so does
malformed input, so that the error is ``json``'s own ``json.JSONDecodeError``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """The attributes ``_json.make_scanner`` reads from a ``JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict[str, str] = {}


def _make_scanner() -> Callable[[str, int], tuple[Any, int]] | None:
    try:
        import _json

        return _json.make_scanner(_Context())  # type: ignore[arg-type]
    except (ImportError, AttributeError, TypeError):
        return None


_scan = _make_scanner()


def loads(text: str) -> Any:
    """``json.loads(text)`` for a ``str``.

    Raises:
        ValueError: Not JSON (a ``json.JSONDecodeError`` with the position).
    """
    if _scan is not None:
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = _scan(text, start)
        except Exception:
            # NOTE: malformed input. The scanner builds its error from json.decoder,
            # which it only finds when json is imported (else a SystemError): json
            # parses it again and raises its precise error.
            pass
        else:
            if not text[end:].strip(_WHITESPACE):
                return value
    import json

    return json.loads(text)


def dumps(obj: Any, *, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> str:
    """``json.dumps(obj, sort_keys=sort_keys, default=default)``.

    Raises:
        TypeError: A value JSON cannot hold (and ``default`` did not convert).
        ValueError: A circular reference.
    """

    def refuse(o: Any) -> Any:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    try:
        import _json

        encode = _json.make_encoder(
            {},
            default or refuse,
            _json.encode_basestring_ascii,
            None,
            ": ",
            ", ",
            sort_keys,
            False,
            True,
        )
    except (ImportError, AttributeError, TypeError):
        import json

        return json.dumps(obj, sort_keys=sort_keys, default=default)
    return "".join(encode(obj, 0))
