"""The one exception type dnnkit raises for bad input.

``python -m dnnkit.train`` prints a :class:`DnnkitError`'s message without a traceback and
exits with status 2; library users catch it like any ``ValueError``.
"""


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


def find_dnnkit_error(err: BaseException | None) -> DnnkitError | None:
    """Our error, if ``err`` is one or wraps one (Hydra's instantiate wraps constructor errors)."""
    while err is not None:
        if isinstance(err, DnnkitError):
            return err
        err = err.__cause__ or err.__context__
    return None
