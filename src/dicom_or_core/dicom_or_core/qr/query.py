"""C-FIND matching and identifier rules of the Query/Retrieve Service Class, ROS-free.

Implements PS3.4 C.2.2.2 (Attribute Matching) and the hierarchical query rules of PS3.4
C.4.1.2.2 / C.6.1 / C.6.2 for the Patient Root and Study Root information models:

* Single Value Matching (C.2.2.2.1): exact for every VR except PN, which matches case
  insensitively (allowed by the standard) and only on the alphabetic component group when
  the query has a single group; trailing ``^`` and spaces are insignificant.
* List of UID Matching (C.2.2.2.2): a UI key with several values matches any of them.
* Universal Matching (C.2.2.2.3): a zero-length key, or a value of only ``*``.
* Wild Card Matching (C.2.2.2.4): ``*`` (any run, also empty) and ``?`` (one character) in
  every string VR except DA, TM, DT and UI.
* Range Matching (C.2.2.2.5): ``a-b``, ``-b`` and ``a-`` for DA, TM and DT; bounds are
  inclusive, an upper bound of lower precision covers its whole period (``-1015`` includes
  10:15:59.999999). A single DA/TM/DT value is the degenerate range ``v-v`` with the same
  precision rule, so ``1015`` matches 10:15:30. With combined date-time matching
  (negotiated by SOP Class Extended Negotiation, PS3.4 C.2.2.2.5.1) a DA range plus the TM
  range of its pair (e.g. StudyDate + StudyTime) is one DT range.
* Sequence Matching (C.2.2.2.6): a query sequence item matches when at least one stored item
  matches all its keys; the answer holds the matching items with the requested keys.
  A query sequence with no item, or an empty item, is universal.

A key whose stored attribute the model does not hold is not used for matching and is
answered zero-length (C.2.2.1.3). Multi-valued stored attributes (ModalitiesInStudy) match
when any of their values matches. Failures raise :class:`QueryError` carrying the status
the handler returns (PS3.4 C.4.1.1.4): 0xA900 for an identifier that breaks the rules,
0xC000 for one that cannot be decoded.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

# ---------------------------------------------------------------------------------------
# Statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4); named so handlers read like the standard.
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_OUT_OF_RESOURCES_MATCHES = 0xA701   # C-MOVE/C-GET: unable to calculate matches
FAILURE_OUT_OF_RESOURCES_SUBOPS = 0xA702    # C-MOVE/C-GET: unable to perform sub-operations
FAILURE_MOVE_DESTINATION_UNKNOWN = 0xA801
FAILURE_IDENTIFIER_DOES_NOT_MATCH = 0xA900
FAILURE_UNABLE_TO_PROCESS = 0xC000
WARNING_SUBOPS_FAILED = 0xB000

PATIENT_ROOT = "PATIENT_ROOT"
STUDY_ROOT = "STUDY_ROOT"
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
ROOT_LEVELS = {PATIENT_ROOT: LEVELS, STUDY_ROOT: LEVELS[1:]}
UNIQUE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
               "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
# Answers are always encoded in UTF-8 (PS3.5 6.1.2.5.3 / PS3.3 C.12.1.1.2 "ISO_IR 192").
RESPONSE_CHARSET = "ISO_IR 192"

_QR_LEVEL = Tag("QueryRetrieveLevel")
_CHARSET = Tag("SpecificCharacterSet")
_WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
_NUMERIC_VRS = {"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_DATE_TIME_VRS = {"DA", "TM", "DT"}
# Date/time pairs that combined date-time range matching joins (PS3.4 C.2.2.2.5.1).
DATE_TIME_PAIRS = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
                   ("ContentDate", "ContentTime"), ("AcquisitionDate", "AcquisitionTime"),
                   ("PatientBirthDate", "PatientBirthTime"),
                   ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
                   ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"))


class QueryError(Exception):
    """A request the SCP must refuse with ``status`` (and ``comment`` as Error Comment)."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]  # Error Comment (0000,0902) is LO
        self.offending = offending

    def status_dataset(self) -> Dataset:
        """The status as a dataset with Error Comment and Offending Element, for handlers."""
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment
        if self.offending is not None:
            ds.OffendingElement = [self.offending]
        return ds


def _bad(comment: str, tag: int | None = None) -> QueryError:
    return QueryError(FAILURE_IDENTIFIER_DOES_NOT_MATCH, comment, tag)


# ---------------------------------------------------------------------------------------
# Date / time parsing into comparable integers.

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?"
                 r"([+-]\d{4})?$")
_DT_RANGE = re.compile(r"^(?P<lo>\d{4}(?:\d{2}){0,5}(?:\.\d{1,6})?(?:[+-]\d{4})?)?-"
                       r"(?P<hi>\d{4}(?:\d{2}){0,5}(?:\.\d{1,6})?(?:[+-]\d{4})?)?$")
_US_PER_DAY = 86_400_000_000
_EPOCH = _dt.datetime(1, 1, 1)


def _fraction(text: str | None, upper: bool) -> int:
    if not text:
        return 999_999 if upper else 0
    # A fraction of lower precision covers its period too (.1 upper = .199999).
    digits = text.ljust(6, "9" if upper else "0")
    return int(digits)


def parse_da(text: str, upper: bool = False) -> int:
    """A DA value as microseconds since 0001-01-01; ``upper`` gives the day's last instant."""
    text = text.strip().replace(".", "")  # ACR-NEMA YYYY.MM.DD is still seen in the wild
    m = _DA.match(text)
    if not m:
        raise ValueError(f"not a DA value: {text!r}")
    day = _dt.date(int(m[1]), int(m[2]), int(m[3])).toordinal() - 1
    return day * _US_PER_DAY + (_US_PER_DAY - 1 if upper else 0)


def parse_tm(text: str, upper: bool = False) -> int:
    """A TM value as microseconds since midnight; missing components are the earliest
    (lower bound) or latest (``upper``) of their period."""
    text = text.strip().replace(":", "")  # ACR-NEMA HH:MM:SS
    m = _TM.match(text)
    if not m:
        raise ValueError(f"not a TM value: {text!r}")
    hh = int(m[1])
    mm = int(m[2]) if m[2] else (59 if upper else 0)
    ss = int(m[3]) if m[3] else (59 if upper else 0)
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError(f"TM out of range: {text!r}")
    if m[3]:
        frac = _fraction(m[4], upper)
    else:
        frac = 999_999 if upper else 0
    return ((hh * 60 + mm) * 60 + min(ss, 59)) * 1_000_000 + frac


def parse_dt(text: str, upper: bool = False) -> int:
    """A DT value as UTC-free microseconds since 0001-01-01 (an explicit &ZZXX offset is
    applied, so values with and without offsets compare on the offset-free clock)."""
    text = text.strip()
    m = _DT.match(text)
    if not m:
        raise ValueError(f"not a DT value: {text!r}")
    year = int(m[1])
    month = int(m[2]) if m[2] else (12 if upper else 1)
    if m[3]:
        day = int(m[3])
    elif upper:
        day = (_dt.date(year + (month == 12), month % 12 + 1, 1) - _dt.timedelta(days=1)).day
    else:
        day = 1
    base = parse_da(f"{year:04d}{month:02d}{day:02d}")
    time_text = "".join(g for g in (m[4], m[5], m[6]) if g)
    if m[7] is not None and m[6]:
        time_text += "." + m[7]
    micros = parse_tm(time_text, upper) if time_text else \
        (_US_PER_DAY - 1 if upper else 0)
    value = base + micros
    if m[8]:
        sign = 1 if m[8][0] == "+" else -1
        offset = sign * (int(m[8][1:3]) * 60 + int(m[8][3:5])) * 60_000_000
        value -= offset
    return value


_PARSERS = {"DA": parse_da, "TM": parse_tm, "DT": parse_dt}


def parse_range(vr: str, text: str) -> tuple[int | None, int | None]:
    """A DA/TM/DT range or single value as inclusive (low, high); None = open end."""
    parser = _PARSERS[vr]
    text = text.strip()
    if vr == "DT":
        single = _DT.match(text)
        # "2024-2025" is a range, though it also parses as a year with offset -2025: an
        # offset is only taken as one after a time of day (at least YYYYMMDDHH).
        if single and (not single[8] or single[4]):
            return parser(text), parser(text, upper=True)
        m = _DT_RANGE.match(text)
        if m is None:
            raise ValueError(f"not a DT value or range: {text!r}")
        lo, hi = m["lo"], m["hi"]
    else:
        if "-" not in text:
            return parser(text), parser(text, upper=True)
        if text.count("-") != 1:
            raise ValueError(f"a {vr} range has one '-': {text!r}")
        lo, hi = text.split("-")
    if not lo and not hi:
        raise ValueError(f"a {vr} range needs at least one bound: {text!r}")
    low = parser(lo) if lo else None
    high = parser(hi, upper=True) if hi else None
    if low is not None and high is not None and low > high:
        raise ValueError(f"{vr} range bounds are reversed: {text!r}")
    return low, high


def _stored_instant(vr: str, text: str) -> int | None:
    try:
        return _PARSERS[vr](text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# Element matching.


def _values(elem: DataElement) -> list:
    """An element's values as a list of Python values (strings for text VRs)."""
    value = elem.value
    if value is None or value == "" or (isinstance(value, (list, MultiValue, Sequence))
                                        and len(value) == 0):
        return []
    if isinstance(value, (list, MultiValue)):
        return [v for v in value]
    if isinstance(value, bytes):
        return [value]
    return [value]


def _text(value: object) -> str:
    return str(value).strip(" \x00")


def is_universal(elem: DataElement) -> bool:
    """Universal matching: zero-length, or only '*' for a wildcard VR (C.2.2.2.3).

    A UI key of only ``*`` is universal too. UI takes no wild cards (C.2.2.2.4), so the
    value is not a UID that could match anything; findscu users type ``StudyInstanceUID=*``
    for "any study", and the widely deployed archives (Orthanc, dcm4chee) answer it so.
    """
    values = _values(elem)
    if not values:
        return True
    if elem.VR == "SQ":
        return all(len(item) == 0 for item in elem.value)
    return elem.VR in _WILDCARD_VRS | {"UI"} and len(values) == 1 and _text(values[0]) == "*"


def _pn_norm(text: str, groups: bool) -> str:
    text = text.strip()
    parts = text.split("=")
    if not groups:
        parts = parts[:1]
    return "=".join(p.rstrip("^ ") for p in parts).rstrip("=").casefold()


def _fixed_at(segment: str, text: str, start: int) -> bool:
    """Whether ``segment`` (literal characters and ``?``) matches ``text`` at ``start``."""
    if start < 0 or start + len(segment) > len(text):
        return False
    if "?" not in segment:
        return text.startswith(segment, start)
    return all(c == "?" or c == text[start + k] for k, c in enumerate(segment))


def _find_segment(segment: str, text: str, start: int, end: int) -> int:
    """The leftmost position ``p`` in ``[start, end - len(segment)]`` where ``segment``
    (literal characters and ``?``) matches ``text``, or -1.

    Without ``?`` this is ``str.find``. With ``?`` it is the bit-parallel Shift-And scan:
    one pass over ``text`` whatever the segment holds, each step a few integer operations
    on a ``len(segment)``-bit state, so no input can make it backtrack."""
    m = len(segment)
    if end - start < m:
        return -1
    if "?" not in segment:
        return text.find(segment, start, end)
    any_char = 0                    # bit k set: position k of the segment is '?'
    masks: dict[str, int] = {}      # bit k set in masks[c]: position k is the literal c
    for k, c in enumerate(segment):
        if c == "?":
            any_char |= 1 << k
        else:
            masks[c] = masks.get(c, 0) | 1 << k
    accept = 1 << (m - 1)
    state = 0                       # bit k set: segment[:k + 1] matches ending here
    for i in range(start, end):
        state = ((state << 1) | 1) & (masks.get(text[i], 0) | any_char)
        if state & accept:
            return i - m + 1
    return -1


def wildcard_match(pattern: str, text: str) -> bool:
    """Wild Card Matching (PS3.4 C.2.2.2.4): whether all of ``text`` matches ``pattern``,
    where ``*`` matches any run of characters (also none) and ``?`` exactly one; every
    other character matches itself.

    Linear in ``len(text)`` for any pattern, never backtracking: a fuzzer's
    ``****************x`` took 29 s with the former regex (``.*`` per star) and froze the
    process. The pattern is cut at its ``*`` (so runs of ``*`` collapse into one): the
    first piece must match at the start of ``text``, the last at its end, and each piece
    between them is placed at its leftmost match after the previous one. Leftmost
    placement is always safe: any match that places a piece further right can place it
    leftmost instead and leaves more room for the pieces after it."""
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return len(text) == len(pattern) and _fixed_at(pattern, text, 0)
    first, middle, last = pieces[0], pieces[1:-1], pieces[-1]
    if len(first) + len(last) > len(text):
        return False
    if not _fixed_at(first, text, 0) or not _fixed_at(last, text, len(text) - len(last)):
        return False
    position, end = len(first), len(text) - len(last)
    for piece in middle:
        if not piece:  # "**": a run of stars is one star
            continue
        found = _find_segment(piece, text, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def _match_string(vr: str, query: str, stored: str) -> bool:
    if vr == "PN":
        # Both sides are case folded, so the wildcard match itself stays exact.
        has_groups = "=" in query
        q = _pn_norm(query, has_groups)
        s = _pn_norm(stored, has_groups)
        if "*" in q or "?" in q:
            return wildcard_match(q, s)
        return q == s
    q, s = query.strip(), stored.strip()
    if vr in _WILDCARD_VRS and ("*" in q or "?" in q):
        return wildcard_match(q, s)
    return q == s


def _match_numeric(query: object, stored: object) -> bool:
    try:
        return float(str(query)) == float(str(stored))
    except ValueError:
        return False


def _element_vr(tag: int, elem: DataElement | None) -> str:
    if elem is not None and elem.VR not in ("UN", None):
        return elem.VR
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def check_key(elem: DataElement) -> None:
    """Reject a key whose value no matching rule can use (invalid date, range, UID...)."""
    if is_universal(elem):
        return
    vr = _element_vr(elem.tag, elem)
    name = keyword_for_tag(elem.tag) or str(elem.tag)
    if vr in _DATE_TIME_VRS:
        values = _values(elem)
        if len(values) != 1:
            raise _bad(f"{name}: one {vr} value or range expected", elem.tag)
        try:
            parse_range(vr, _text(values[0]))
        except ValueError as exc:
            raise _bad(f"{name}: {exc}", elem.tag) from None
    elif vr == "UI":
        for value in _values(elem):
            text = _text(value)
            if not re.fullmatch(r"[0-9.]{1,64}", text):
                raise _bad(f"{name}: not a UID: {text[:30]!r}", elem.tag)
    elif vr == "SQ":
        if len(elem.value) > 1:
            raise _bad(f"{name}: a sequence key holds at most one item", elem.tag)
        for item in elem.value:
            for sub in item:
                check_key(sub)


def match_element(query: DataElement, stored: DataElement | None) -> bool:
    """Whether ``stored`` satisfies the key ``query`` (PS3.4 C.2.2.2)."""
    if is_universal(query):
        return True
    vr = _element_vr(query.tag, stored if stored is not None else query)
    if stored is None:
        return False
    if vr == "SQ":
        return bool(match_sequence(query, stored))
    stored_values = _values(stored)
    if not stored_values:
        return False
    query_values = _values(query)
    if vr in _DATE_TIME_VRS:
        low, high = parse_range(vr, _text(query_values[0]))
        for value in stored_values:
            instant = _stored_instant(vr, _text(value))
            if instant is None:
                continue
            # A stored value of lower precision (DA 20241124, TM 10) is a period: it
            # matches when the period overlaps the query range.
            end = _PARSERS[vr](_text(value), upper=True)
            if (high is None or instant <= high) and (low is None or end >= low):
                return True
        return False
    if vr in _NUMERIC_VRS:
        return any(_match_numeric(q, s) for q in query_values for s in stored_values)
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return query.value == stored.value
    return any(_match_string(vr, _text(q), _text(s)) for q in query_values
               for s in stored_values)


def match_sequence(query: DataElement, stored: DataElement) -> list[Dataset]:
    """Stored items matching the (single) query item; all items when it is universal."""
    items = list(stored.value or [])
    if not query.value or len(query.value[0]) == 0:
        return items
    wanted = query.value[0]
    return [item for item in items if match_dataset(wanted, item)]


def match_dataset(query: Dataset, record: Dataset, combined_datetime: bool = False,
                  skip: Iterable[int] = ()) -> bool:
    """Whether ``record`` matches every key of ``query`` it supports.

    Keys absent from ``record`` are not supported by the model and do not restrict the
    match (PS3.4 C.2.2.1.3); they are answered zero-length.
    """
    skipped = set(skip)
    if combined_datetime:
        for date_kw, time_kw in DATE_TIME_PAIRS:
            result = _match_combined(query, record, date_kw, time_kw)
            if result is not None:
                if not result:
                    return False
                skipped.update((Tag(date_kw), Tag(time_kw)))
    for elem in query:
        tag = elem.tag
        if tag in skipped or tag.group == 0x0000 or tag in (_QR_LEVEL, _CHARSET):
            continue
        if tag not in record:
            continue
        if not match_element(elem, record[tag]):
            return False
    return True


def _match_combined(query: Dataset, record: Dataset, date_kw: str,
                    time_kw: str) -> bool | None:
    """Combined date-time range matching of one DA/TM pair; None when not applicable
    (both keys must be present, non-universal and at least one a range)."""
    if date_kw not in query or time_kw not in query or date_kw not in record:
        return None
    qd, qt = query[date_kw], query[time_kw]
    if is_universal(qd) or is_universal(qt):
        return None
    dtext, ttext = _text(qd.value), _text(qt.value)
    if "-" not in dtext and "-" not in ttext:
        return None
    dlo, _, dhi = dtext.partition("-") if "-" in dtext else (dtext, "", dtext)
    tlo, _, thi = ttext.partition("-") if "-" in ttext else (ttext, "", ttext)
    low = (parse_da(dlo) + parse_tm(tlo)) if dlo and tlo else (parse_da(dlo) if dlo else None)
    high = (parse_da(dhi) + parse_tm(thi, upper=True)) if dhi and thi \
        else (parse_da(dhi, upper=True) if dhi else None)
    sd = _text(record[date_kw].value) if record[date_kw].value else ""
    if not sd:
        return False
    st = _text(record[time_kw].value) if time_kw in record and record[time_kw].value else ""
    start = parse_da(sd) + (parse_tm(st) if st else 0)
    end = parse_da(sd) + (parse_tm(st, upper=True) if st else _US_PER_DAY - 1)
    return (high is None or start <= high) and (low is None or end >= low)


# ---------------------------------------------------------------------------------------
# Identifier rules and answers.


@dataclass(frozen=True)
class Query:
    """A validated C-FIND / C-GET / C-MOVE identifier."""

    root: str
    level: str
    identifier: Dataset


def _single_value(elem: DataElement) -> bool:
    values = _values(elem)
    if len(values) != 1:
        return False
    text = _text(values[0])
    return bool(text) and "*" not in text and "?" not in text


def parse_identifier(identifier: Dataset, root: str, *, relational: bool = False,
                     combined_datetime: bool = False, open_upper_levels: bool = False) -> Query:
    """Validate an identifier against the information model ``root``.

    Hierarchical rules (PS3.4 C.4.1.2.2.1): Query/Retrieve Level present and legal for the
    model, and the unique key of every level above it present with a single value, unless
    relational queries were negotiated (``relational``), when they may be absent or any key.

    ``open_upper_levels`` (C-FIND and QIDO-RS): a unique key above the level may also be
    absent, universal or a list of UIDs, and the query then spans every entity above, as the
    widely deployed archives answer a Study Root SERIES query without StudyInstanceUID
    ("which ES series are live?") without relational extended negotiation. Retrieval keeps
    the strict rule: a C-GET / C-MOVE names what it moves.

    Every key must be usable for matching (:func:`check_key`): a malformed value (a UID that
    is not one, an invalid date or range) is refused whatever the level. With
    ``combined_datetime`` the time of a date-time pair may be a range that wraps midnight
    (its bounds are checked one by one, the order applies to the combined range).
    """
    if root not in ROOT_LEVELS:
        raise ValueError(f"unknown information model {root!r}")
    try:
        level = _query_level(identifier, root)
        if not (relational or open_upper_levels):
            _check_unique_keys_above(identifier, root, level)
        paired = _check_paired_times(identifier) if combined_datetime else set()
        for elem in identifier:
            if elem.tag not in paired:
                check_key(elem)
    except QueryError:
        raise
    except Exception as exc:  # pydicom could not convert a value: refuse, don't crash
        raise QueryError(FAILURE_UNABLE_TO_PROCESS,
                         f"identifier cannot be decoded: {type(exc).__name__}") from None
    return Query(root, level, identifier)


def _query_level(identifier: Dataset, root: str) -> str:
    """The Query/Retrieve Level (0008,0052): present, and a level of the model ``root``."""
    if _QR_LEVEL not in identifier or not identifier[_QR_LEVEL].value:
        raise _bad("QueryRetrieveLevel (0008,0052) is missing", _QR_LEVEL)
    level = _text(identifier[_QR_LEVEL].value).upper()
    if level not in ROOT_LEVELS[root]:
        raise _bad(f"QueryRetrieveLevel {level[:16]!r} is not one of "
                   f"{'/'.join(ROOT_LEVELS[root])}", _QR_LEVEL)
    return level


def _check_unique_keys_above(identifier: Dataset, root: str, level: str) -> None:
    """Hierarchical query: the unique key of every level above ``level`` has one value."""
    levels = ROOT_LEVELS[root]
    for above in levels[:levels.index(level)]:
        keyword = UNIQUE_KEYS[above]
        if keyword not in identifier or not _single_value(identifier[keyword]):
            raise _bad(f"{keyword} needs a single value at level {level}", Tag(keyword))


def _check_paired_times(identifier: Dataset) -> set[BaseTag]:
    """Combined date-time matching: the time keys joined to a non-universal date, whose
    bounds are checked one by one (the range may wrap midnight; the combined range's order
    is the date's business). Returns their tags, which :func:`check_key` must then skip."""
    paired: set[BaseTag] = set()
    for date_kw, time_kw in DATE_TIME_PAIRS:
        if date_kw in identifier and time_kw in identifier \
                and not is_universal(identifier[date_kw]):
            paired.add(Tag(time_kw))
            for bound in _text(identifier[time_kw].value).split("-"):
                if not bound:
                    continue
                try:
                    parse_tm(bound)
                except ValueError as exc:
                    raise _bad(f"{time_kw}: {exc}", Tag(time_kw)) from None
    return paired


def answer(query: Query, record: Dataset) -> Dataset:
    """The C-FIND response identifier for ``record``: exactly the requested keys (stored
    value or zero-length), the unique keys of the level and those above, Query/Retrieve
    Level and Specific Character Set (PS3.4 C.4.1.1.3.2)."""
    ds = Dataset()
    ds.SpecificCharacterSet = RESPONSE_CHARSET
    ds.QueryRetrieveLevel = query.level
    levels = ROOT_LEVELS[query.root]
    for level in levels[:levels.index(query.level) + 1]:
        keyword = UNIQUE_KEYS[level]
        if keyword in record:
            ds[keyword] = _copy(record[keyword])
    for elem in query.identifier:
        tag = elem.tag
        if tag.group == 0x0000 or tag in (_QR_LEVEL, _CHARSET) or tag in ds:
            continue
        if tag not in record:
            ds.add_new(tag, _element_vr(tag, elem), None if elem.VR != "SQ" else [])
            continue
        stored = record[tag]
        if stored.VR == "SQ":
            ds.add_new(tag, "SQ", _answer_items(elem, stored))
        else:
            ds[tag] = _copy(stored)
    return ds


def _copy(elem: DataElement) -> DataElement:
    value = elem.value
    if isinstance(value, MultiValue):
        value = list(value)
    return DataElement(elem.tag, elem.VR, value)


def _answer_items(query: DataElement, stored: DataElement) -> list[Dataset]:
    items = match_sequence(query, stored)
    if not query.value or len(query.value[0]) == 0:
        return [_deep_copy(item) for item in items]
    wanted = query.value[0]
    answers = []
    for item in items:
        out = Dataset()
        for sub in wanted:
            if sub.tag in item:
                out[sub.tag] = _copy(item[sub.tag]) if item[sub.tag].VR != "SQ" else \
                    DataElement(sub.tag, "SQ", _answer_items(sub, item[sub.tag]))
            else:
                out.add_new(sub.tag, _element_vr(sub.tag, sub), None)
        answers.append(out)
    return answers


def _deep_copy(item: Dataset) -> Dataset:
    out = Dataset()
    for elem in item:
        out[elem.tag] = DataElement(elem.tag, "SQ", [_deep_copy(i) for i in elem.value]) \
            if elem.VR == "SQ" else _copy(elem)
    return out


def find(records: Iterable[Dataset], query: Query,
         combined_datetime: bool = False) -> Iterator[Dataset]:
    """Answers for every record of the query's level that matches (records hold the
    attributes of their level and of every level above)."""
    for record in records:
        if match_dataset(query.identifier, record, combined_datetime):
            yield answer(query, record)


def matching_records(records: Iterable[Dataset], query: Query) -> Iterator[Dataset]:
    """Records matching a C-GET / C-MOVE identifier. Retrieval uses the unique keys only
    (PS3.4 C.4.2.2.1): other keys in the identifier are ignored."""
    levels = ROOT_LEVELS[query.root]
    keys = Dataset()
    for level in levels[:levels.index(query.level) + 1]:
        keyword = UNIQUE_KEYS[level]
        if keyword in query.identifier:
            keys[keyword] = query.identifier[keyword]
    if UNIQUE_KEYS[query.level] not in keys or is_universal(keys[UNIQUE_KEYS[query.level]]):
        raise _bad(f"{UNIQUE_KEYS[query.level]} is required to retrieve at level "
                   f"{query.level}", Tag(UNIQUE_KEYS[query.level]))
    for record in records:
        if match_dataset(keys, record):
            yield record
