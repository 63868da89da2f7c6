"""The one exception type dnnkit raises for bad input.

``python -m dnnkit.train`` prints a :class:`DnnkitError`'s message without a traceback and
exits with status 2; library users catch it like any ``ValueError``.
"""

import math


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


def find_dnnkit_error(err: BaseException | None) -> DnnkitError | None:
    """Our error, if ``err`` is one or wraps one (Hydra's instantiate wraps constructor errors)."""
    while err is not None:
        if isinstance(err, DnnkitError):
            return err
        err = err.__cause__ or err.__context__
    return None
