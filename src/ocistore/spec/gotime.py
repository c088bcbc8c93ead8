"""Go's ``time.Time`` as Docker's code writes and reads it: the one RFC 3339 parser and
formatter of ocistore (configs' ``created``, history times, the time of the last tag).

:class:`GoTime` is a time as Go holds it (wall clock, nanoseconds, zone offset);
:meth:`GoTime.parse_rfc3339` parses as ``Time.UnmarshalJSON`` does (Go's fast path and
its lenient fallback), :meth:`GoTime.format_rfc3339nano` writes ``RFC3339Nano``.
:func:`unix_nanos` and :func:`unix_seconds` give a config's time as the engine compares
and lists it, Go's zero time (:data:`ZERO_UNIX`) for a missing or unreadable one.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from ..errors import InvalidInput

__all__ = ["ZERO_UNIX", "GoTime", "GoTimeError", "now_rfc3339nano", "unix_nanos", "unix_seconds"]


class GoTimeError(InvalidInput):
    """Text that Go's ``time.Time`` would not read, or a time it would not write."""


_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in(month: int, year: int) -> int:
    if month == 2 and _is_leap(year):
        return 29
    return _DAYS_IN_MONTH[month - 1]


def _civil_from_days(days: int) -> tuple[int, int, int]:
    # Howard Hinnant's algorithm: days since 1970-01-01 to proleptic Gregorian y-m-d.
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def _days_from_civil(y: int, m: int, d: int) -> int:
    # The inverse of _civil_from_days (Howard Hinnant's days_from_civil).
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


# Go's fast RFC 3339 path, or its lenient time.Parse fallback (1- or 2-digit hour, ','
# before the fraction); both keep at most 9 fraction digits.
_RFC3339_LENIENT: Final = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})T(\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d+))?(Z|[+-]\d{2}:\d{2})"
)


class GoTime(NamedTuple):
    """A Go ``time.Time`` as its wall clock in its zone, and the zone's UTC offset.

    Marshalling only needs what Go prints: the local date and time, the nanoseconds and
    the offset (``Z`` when it is zero). ``offset`` is in seconds east of UTC.
    """

    year: int = 1
    month: int = 1
    day: int = 1
    hour: int = 0
    minute: int = 0
    second: int = 0
    nanosecond: int = 0
    offset: int = 0

    @classmethod
    def now(cls) -> GoTime:
        """Now, in UTC (``time.Now().UTC()``)."""
        return cls.unix(*divmod(time.time_ns(), 1_000_000_000))

    @classmethod
    def unix(cls, sec: int, nsec: int = 0, offset: int = 0) -> GoTime:
        """Go's ``time.Unix(sec, nsec)`` seen in a zone ``offset`` seconds east of UTC."""
        sec += nsec // 1_000_000_000
        nsec %= 1_000_000_000
        local = sec + offset
        days, rem = divmod(local, 86400)
        y, m, d = _civil_from_days(days)
        return cls(y, m, d, rem // 3600, rem % 3600 // 60, rem % 60, nsec, offset)

    @classmethod
    def parse_rfc3339(cls, text: bytes | str) -> GoTime:
        """Parse as Go's ``Time.UnmarshalJSON`` parses the text between the quotes."""
        raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        m = _RFC3339_LENIENT.fullmatch(raw)
        if m is None:
            raise GoTimeError(f"invalid RFC 3339 time {raw.decode('utf-8', 'replace')!r}")
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        frac, zone = m.group(7), m.group(8)
        shown = raw.decode("ascii", "replace")
        if not 1 <= month <= 12:
            raise GoTimeError(f"invalid time {shown!r}: month out of range")
        if not 1 <= day <= _days_in(month, year):
            raise GoTimeError(f"invalid time {shown!r}: day out of range")
        if hour > 23 or minute > 59 or second > 59:
            raise GoTimeError(f"invalid time {shown!r}: time of day out of range")
        nsec = int((frac[:9] + b"000000000")[:9]) if frac else 0
        offset = 0
        if zone != b"Z":
            zh, zm = int(zone[1:3]), int(zone[4:6])
            # Go's lenient fallback parser accepts offsets up to 24 hours or 60 minutes.
            if zh > 24 or zm > 60:
                raise GoTimeError(f"invalid time {shown!r}: zone offset out of range")
            offset = (zh * 60 + zm) * 60 * (-1 if zone[:1] == b"-" else 1)
        return cls(year, month, day, hour, minute, second, nsec, offset)

    def unix_nanos(self) -> int:
        """Nanoseconds since the Unix epoch (``t.UnixNano()``, without its overflow)."""
        days = _days_from_civil(self.year, self.month, self.day)
        seconds = days * 86400 + self.hour * 3600 + self.minute * 60 + self.second
        return (seconds - self.offset) * 1_000_000_000 + self.nanosecond

    def format_rfc3339nano(self) -> str:
        """Go's ``t.Format(time.RFC3339Nano)``: trailing zeros of the fraction removed."""
        out = (
            f"{self.year:04d}-{self.month:02d}-{self.day:02d}"
            f"T{self.hour:02d}:{self.minute:02d}:{self.second:02d}"
        )
        if self.nanosecond:
            out += "." + f"{self.nanosecond:09d}".rstrip("0")
        if self.offset == 0:
            return out + "Z"
        zone = self.offset // 60 if self.offset > 0 else -((-self.offset) // 60)
        sign = "-" if zone < 0 else "+"
        zone = abs(zone)
        return out + f"{sign}{zone // 60:02d}:{zone % 60:02d}"

    def marshal_json(self) -> bytes:
        """Go's ``Time.MarshalJSON`` (which refuses years outside 0..9999)."""
        if not 0 <= self.year <= 9999:
            raise GoTimeError(f"Time.MarshalJSON: year {self.year} outside of range [0,9999]")
        if self.offset % 60:
            raise GoTimeError("Time.MarshalJSON: timezone offset has fractional minute")
        return b'"' + self.format_rfc3339nano().encode("ascii") + b'"'


#: Go's zero ``time.Time`` (0001-01-01T00:00:00Z), in seconds since the Unix epoch.
ZERO_UNIX: Final = -62135596800


def now_rfc3339nano() -> str:
    """Now, in UTC, as Go's ``time.Now().UTC().Format(time.RFC3339Nano)`` writes it
    (nanoseconds, trailing zeros cut)."""
    return GoTime.now().format_rfc3339nano()


#: The form nearly every config's time has (``2026-12-02T03:17:36.091396166Z``): read
#: by the C parser, the fraction added exactly. Anything else, and anything it refuses,
#: goes through :meth:`GoTime.parse_rfc3339` (a listing reads thousands of times).
_CANONICAL: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)


def unix_nanos(text: object) -> int | None:
    """An RFC 3339 time, read as Go reads it, in nanoseconds since the Unix epoch;
    ``None`` when ``text`` is not one (or not a string)."""
    if not isinstance(text, str | bytes) or not text:
        return None
    m = _CANONICAL.fullmatch(text) if isinstance(text, str) else None
    if m is not None:
        whole, fraction, zone = m.groups()
        try:
            t = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
        except ValueError:
            pass  # (Go's own reading decides: it allows more, such as +24:00)
        else:
            nanos = int((fraction + "00000000")[:9]) if fraction else 0
            return (t - _EPOCH) // _SECOND * 1_000_000_000 + nanos
    try:
        return GoTime.parse_rfc3339(text).unix_nanos()
    except InvalidInput:
        return None


def unix_seconds(text: object) -> int:
    """An RFC 3339 time in whole seconds since the Unix epoch, as Go's ``Time.Unix()``
    (rounded down), as the engine gives ``Created`` and history times; Go's zero time
    for a missing or unreadable one."""
    ns = unix_nanos(text)
    return ZERO_UNIX if ns is None else ns // 1_000_000_000
