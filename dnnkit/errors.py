"""The one exception type dnnkit raises for bad input, and the checks every module shares.

``python -m dnnkit.train`` prints a :class:`DnnkitError`'s message without a traceback and
exits with status 2; library users catch it like any ``ValueError``.
"""

import collections.abc
import functools
import importlib
import inspect
import json
import math
import types
import typing


class DnnkitError(ValueError):
    """Bad input: the message quotes the bad value and says what would be valid."""


def choose(kind: str, value: str, valid) -> str:
    """Return ``value`` if it is one of ``valid``, else raise one readable error.

    Example::

        >>> choose("activation", "elu", ["relu", "elu"])
        'elu'
    """
    valid = sorted(valid)
    if value not in valid:
        raise DnnkitError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return value


def number(
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
):
    """Return ``value`` if it is a number (an ``int`` with ``integer=True``; never a bool) within
    ``low``/``high`` (open ends with ``low_open``/``high_open``; ``None`` too with ``optional``),
    else raise one readable error that quotes it and says what is valid. NaN is never within, and
    infinity only below ``high=math.inf``.

    Example::

        >>> number("patience", 3, 1, integer=True)
        3
        >>> number("factor", 1.5, 0, 1, low_open=True, high_open=True)
        Traceback (most recent call last):
        ...
        dnnkit.errors.DnnkitError: factor must be a number in (0, 1), got 1.5
    """
    if value is None and optional:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    ok = ok and (low is None or (value > low if low_open else value >= low))
    if high is None:
        ok = ok and math.isfinite(value)
    else:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        kind = "an integer" if integer else "a number"
        if high is not None:
            valid = f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif (low, low_open) == (0, True) or (integer and (low, low_open) == (1, False)):
            valid = f"a positive {kind.split()[-1]}"
        else:
            valid = kind if low is None else f"{kind} {'>' if low_open else '>='} {low}"
        raise DnnkitError(f"{name} must be {valid}{' or null' if optional else ''}, got {value!r}")
    return value


def not_a_boolean(name: str, value, valid: str = "a number"):
    """``value``, unless it is a bool where a number belongs (YAML's ``true`` is not 1, however
    Python counts it): then one error that says so and what to give instead.

    Example::

        >>> not_a_boolean("data.n_per_class", True, "an integer or null")
        Traceback (most recent call last):
        ...
        dnnkit.errors.DnnkitError: data.n_per_class=true is a boolean, not a number: give an integer or null
    """
    if isinstance(value, bool):
        raise DnnkitError(f"{name}={str(value).lower()} is a boolean, not a number: give {valid}")
    return value


def shorten(text, limit: int = 100) -> str:
    """``text`` as a string of at most ``limit`` characters, ``...`` marking a cut (for quoting
    a long value in a one-line message).

    Example::

        >>> shorten("x" * 300, 5)
        'xxxxx...'
    """
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def find_dnnkit_error(err: BaseException | None) -> DnnkitError | None:
    """Our error, if ``err`` is one or wraps one (Hydra's instantiate wraps constructor errors)."""
    while err is not None:
        if isinstance(err, DnnkitError):
            return err
        err = err.__cause__ or err.__context__
    return None


# ----------------------------------------------------------------------------- booleans are not numbers


def _admitted(hint) -> tuple[set, set]:
    """(types of a value, types of a sequence's elements) that a type hint admits; ``object``
    stands for anything (``Any``, a forward reference, a type variable)."""
    scalars: set = set()
    elements: set = set()
    todo = [hint]
    while todo:
        h = todo.pop()
        origin = typing.get_origin(h)
        if origin in (typing.Union, types.UnionType):
            todo.extend(typing.get_args(h))
        elif origin is typing.Literal:
            scalars |= {type(a) for a in typing.get_args(h)}
        elif origin in (list, tuple, set, frozenset, collections.abc.Sequence):
            scalars.add(list)
            for arg in typing.get_args(h):
                elements |= _admitted(arg)[0] if arg is not Ellipsis else set()
        elif h is None or h is type(None):
            scalars.add(type(None))
        elif isinstance(h, type) and origin is None:
            scalars.add(h)
        elif isinstance(origin, type):
            scalars.add(origin)
        else:
            scalars.add(object)
    return scalars, elements


def _numeric(admitted: set) -> str | None:
    """``an integer`` or ``a number`` if ``admitted`` takes numbers but no bool, else None."""
    if bool in admitted or object in admitted or not admitted & {int, float}:
        return None
    return "an integer" if float not in admitted else "a number"


def _locate(target: str):
    """The object a ``_target_`` names (``torch.optim.SGD``), imported as Hydra would."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(target)


@functools.cache
def parameter_types(target: str) -> dict[str, tuple[set, set]]:
    """Per constructor argument of ``target``: what its type hint admits (:func:`_admitted`), or
    for an argument without one, what its default suggests. Empty when it cannot be inspected."""
    try:
        obj = _locate(target)
        signature = inspect.signature(obj)
    except Exception:  # noqa: BLE001 - not ours to judge: instantiating it reports the problem
        return {}
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - a hint naming something that cannot be imported here
        hints = {}
    out = {}
    for name, p in signature.parameters.items():
        if name in hints:
            out[name] = _admitted(hints[name])
        elif isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
            out[name] = ({int, float}, set())
    return out


def refuse_booleans(path: str, node) -> None:
    """Walk a resolved config (plain dicts and lists): wherever a ``_target_``'s argument takes a
    number, or a list of numbers, but no bool, a bool is one error that quotes it.

    Example::

        >>> refuse_booleans("model", {"_target_": "dnnkit.nn.MLP", "hidden": [True, 100]})
        Traceback (most recent call last):
        ...
        dnnkit.errors.DnnkitError: model.hidden=[true, 100] holds a boolean, not a number: give integers
    """
    if isinstance(node, list):
        for i, item in enumerate(node):
            refuse_booleans(f"{path}[{i}]", item)
        return
    if not isinstance(node, dict):
        return
    params = parameter_types(node["_target_"]) if isinstance(node.get("_target_"), str) else {}
    for key, value in node.items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        here = f"{path}.{key}" if path else key
        scalars, elements = params.get(key, (set(), set()))
        kind = _numeric(scalars)
        if isinstance(value, bool) and kind:
            not_a_boolean(here, value, kind + (" or null" if type(None) in scalars else ""))
        if isinstance(value, list) and any(isinstance(v, bool) for v in value) and (kind := _numeric(elements)):
            valid = "integers" if kind == "an integer" else "numbers"
            raise DnnkitError(f"{here}={json.dumps(value)} holds a boolean, not a number: give {valid}")
        refuse_booleans(here, value)
