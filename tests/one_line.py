"""A helper the data tests share: the DataError a call raises, checked to be one line."""

from __future__ import annotations

import pytest

from toolkit.errors import DataError


def error_of(fn, *args, **kw) -> DataError:
    """The DataError `fn(*args, **kw)` raises (a generator is run to the end first); fails unless one line."""
    with pytest.raises(DataError) as info:
        result = fn(*args, **kw)
        if hasattr(result, "__next__"):
            list(result)
    message = str(info.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    return info.value
