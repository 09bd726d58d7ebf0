"""Dates as data files write them, parsed into real dates so reports order them by time, not as text.

`parse_date` reads ISO dates (`2021-03-04`, `2021-03-04T10:00:00Z`, `2021-03`, `2021`), US-style
`M/D/YYYY` (`9/8/2016`, the form spreadsheets export), `D Mon YYYY` / `Mon D, YYYY` (`5 Jan 2015`,
the arXiv `versions` form) and, when a record has no usable date, `date_of_arxiv_id` reads the
month an arXiv identifier encodes: new-style `0704.0001` / `2101.00001v2` -> 2007-04 / 2021-01,
old-style `hep-th/9901001` -> 1999-01. A `Date` keeps how precise it is, so a month from an id
prints as `2007-04`, never as a made-up first day.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, NamedTuple

__all__ = ["Date", "parse_date", "date_of_arxiv_id", "record_date"]

_ISO = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?(?:[T ][\d:.]+(?:Z|[+-]\d\d:?\d\d)?)?$")
_US = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})(?: [\d:.]+(?: ?[AP]M)?)?$", re.I)
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAY_MONTH = re.compile(r"^(?:[A-Za-z]{3},? )?(\d{1,2}) ([A-Za-z]{3})[a-z]* (\d{4})\b")
_MONTH_DAY = re.compile(r"^([A-Za-z]{3})[a-z]* (\d{1,2}),? (\d{4})$")
_NEW_ID = re.compile(r"^(?:arxiv:)?(\d{2})(\d{2})\.\d{4,5}(?:v\d+)?$", re.I)
_OLD_ID = re.compile(r"^(?:arxiv:)?[a-z-]+(?:\.[a-z-]+)?/(\d{2})(\d{2})\d{3}(?:v\d+)?$", re.I)


class Date(NamedTuple):
    """A calendar date and its precision (`day`, `month` or `year`); ordered by the date."""

    date: dt.date
    precision: str = "day"

    def __str__(self) -> str:
        iso = self.date.isoformat()
        return {"day": iso, "month": iso[:7], "year": iso[:4]}[self.precision]


def _make(year: int, month: int | None, day: int | None) -> Date | None:
    try:
        return Date(dt.date(year, month or 1, day or 1), "day" if day else "month" if month else "year")
    except ValueError:  # month 13, February 30, ...
        return None


def parse_date(value: Any) -> Date | None:
    """A date from ISO, M/D/YYYY, `5 Jan 2015` or `Jan 5, 2015` text (or a date object); None otherwise."""
    if isinstance(value, dt.datetime):
        return Date(value.date())
    if isinstance(value, dt.date):
        return Date(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if m := _ISO.match(text):
        year, month, day = m.groups()
        return _make(int(year), int(month) if month else None, int(day) if day else None)
    if m := _US.match(text):
        month, day, year = m.groups()
        return _make(int(year), int(month), int(day))
    if m := _DAY_MONTH.match(text):
        day, month, year = m.groups()
        return _make(int(year), _MONTHS.get(month.lower()), int(day)) if month.lower() in _MONTHS else None
    if m := _MONTH_DAY.match(text):
        month, day, year = m.groups()
        return _make(int(year), _MONTHS.get(month.lower()), int(day)) if month.lower() in _MONTHS else None
    return None


def date_of_arxiv_id(identifier: Any) -> Date | None:
    """The month an arXiv id encodes (`0704.0001` -> 2007-04, `hep-th/9901001` -> 1999-01), else None."""
    if not isinstance(identifier, str):
        return None
    text = identifier.strip()
    m = _NEW_ID.match(text) or _OLD_ID.match(text)
    if not m:
        return None
    yy, mm = int(m.group(1)), int(m.group(2))
    year = 1900 + yy if yy >= 91 else 2000 + yy  # arXiv began in August 1991
    return _make(year, mm, None) if 1 <= mm <= 12 else None


def record_date(value: Any, identifier: Any = None) -> Date | None:
    """A record's date: its date field when that parses, else the month its arXiv id encodes."""
    return parse_date(value) or date_of_arxiv_id(identifier)
