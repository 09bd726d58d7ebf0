"""Dates as data files write them, parsed into real dates so reports order them by time, not as text.

`parse_date` reads ISO dates (`2021-03-04`, `2021-03-04T10:00:00Z`, `2021-03`, `2021`), US-style
`M/D/YYYY` (`9/8/2016`, the form spreadsheets export), `D Mon YYYY` / `Mon D, YYYY` (`5 Jan 2015`,
the arXiv `versions` form); `date_of_arxiv_id` reads the month an arXiv identifier encodes: new-style
`0704.0001` / `2101.00001v2` -> 2007-04 / 2021-01 (new-style ids began in April 2007), old-style
`hep-th/9901001` -> 1999-01 (they ran from 1991 to March 2007). A `Date` keeps how precise it is,
so a month from an id prints as `2007-04`, never as a made-up first day.

`dated` picks a record's date the way every stage must (one rule, so `data check`'s range is the
one `gaps` uses): the first version's `created` date (the submission date, in Kaggle's arXiv
`versions`), else the month of its arXiv id, else its date column, which in Kaggle's metadata is
`update_date`: the last update, not the submission. A spreadsheet that read `0704.0001` as a
number writes `704.0001`; `restore_arxiv_id` puts the zero back when the version date agrees.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, NamedTuple

__all__ = ["Date", "parse_date", "date_of_arxiv_id", "versions_date", "restore_arxiv_id", "dated", "date_sources", "record_date", "SOURCES"]

# where a record's date came from -> how reports name it
SOURCES = {"version": "first version", "id": "arXiv id", "column": "date column", "update_date": "update_date (last update, not submission)"}

_ISO = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?(?:[T ][\d:.]+(?:Z|[+-]\d\d:?\d\d)?)?$")
_US = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})(?: [\d:.]+(?: ?[AP]M)?)?$", re.I)
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAY_MONTH = re.compile(r"^(?:[A-Za-z]{3},? )?(\d{1,2}) ([A-Za-z]{3})[a-z]* (\d{4})\b")
_MONTH_DAY = re.compile(r"^([A-Za-z]{3})[a-z]* (\d{1,2}),? (\d{4})$")
_NEW_ID = re.compile(r"^(?:arxiv:)?(\d{2})(\d{2})\.\d{4,5}(?:v\d+)?$", re.I)
_OLD_ID = re.compile(r"^(?:arxiv:)?[a-z][a-z-]*(?:\.[a-z-]+)?/(\d{2})(\d{2})\d{3}(?:v\d+)?$", re.I)
_LOST_ZERO = re.compile(r"^(0?)([7-9])(\d{2})(\.\d{4,5}(?:v\d+)?)$")  # 0704..0912 ids, the only ones with a leading zero
_CREATED = re.compile(r"""created['"]?\s*[:=]\s*['"]([^'"]+)['"]""")


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
    if not 1 <= mm <= 12:
        return None
    if m.re is _NEW_ID:
        return _make(2000 + yy, mm, None) if (yy, mm) >= (7, 4) else None
    if yy >= 91 or (yy, mm) <= (7, 3):  # arXiv began in August 1991
        return _make(1900 + yy if yy >= 91 else 2000 + yy, mm, None)
    return None


def versions_date(versions: Any) -> Date | None:
    """The `created` date of the first version in arXiv's `versions` field: a list of
    {"version": "v1", "created": "Mon, 2 Apr 2007 19:18:42 GMT"} objects, or that list as text
    (JSON or Python's repr, as a CSV export writes it); None when there is none."""
    if isinstance(versions, str):
        m = _CREATED.search(versions)
        return parse_date(m.group(1)) if m else None
    if isinstance(versions, dict) or not hasattr(versions, "__iter__"):
        return None
    entries = [v for v in versions if isinstance(v, dict)]  # a list, or a Parquet/Arrow array of them
    first = next((v for v in entries if v.get("version") == "v1"), entries[0] if entries else None)
    return parse_date(first.get("created")) if first else None


def restore_arxiv_id(identifier: Any, date: Date | None) -> Any:
    """`704.0001` -> `0704.0001` when `date` (the version date) is in April 2007, the month the
    restored id encodes; any other identifier is returned as it is."""
    if not isinstance(identifier, (str, float)) or date is None:
        return identifier
    text = str(identifier).strip()
    m = _LOST_ZERO.match(text)
    if not m or m.group(1):
        return identifier
    fixed = f"0{text}"
    month = date_of_arxiv_id(fixed)
    return fixed if month is not None and (month.date.year, month.date.month) == (date.date.year, date.date.month) else identifier


def dated(value: Any, identifier: Any = None, versions: Any = None, column: str = "update_date") -> tuple[Date | None, str]:
    """A record's date and its source (a key of `SOURCES`, "" when undated): the first version's
    date, else the month its arXiv id encodes, else its date `column`'s `value`."""
    if (date := versions_date(versions)) is not None:
        return date, "version"
    if (date := date_of_arxiv_id(identifier)) is not None:
        return date, "id"
    if (date := parse_date(value)) is not None:
        return date, "update_date" if column == "update_date" else "column"
    return None, ""


def date_sources(counts: dict[str, int]) -> str:
    """How many records got a date from which source, in `SOURCES` order: "first version 3, arXiv id 1"."""
    return ", ".join(f"{label} {counts[key]}" for key, label in SOURCES.items() if counts.get(key)) or "none"


def record_date(value: Any, identifier: Any = None, versions: Any = None) -> Date | None:
    """A record's date (see `dated`)."""
    return dated(value, identifier, versions)[0]
