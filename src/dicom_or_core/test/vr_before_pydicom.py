"""The hand-written VR checks dicom_or_core.model.vr had before it used pydicom's
validate_value, kept verbatim as the reference test_vr_equivalence compares against.

Value Representation rules of PS3.5 section 6.2 for the VRs the context uses.

Each ``check_*`` returns the value unchanged when it is valid and raises
:class:`~dicom_or_core.model.errors.DicomOrError` naming ``field`` otherwise. Empty strings are
valid everywhere (a type 2 attribute is then sent zero-length); whether a field is
*required* is the caller's rule, checked with :func:`require`.
"""

from __future__ import annotations

import datetime as _dt
import re

from dicom_or_core.model.errors import DicomOrError

# PS3.5 6.2: the default character repertoire excludes control characters other than ESC;
# LO, SH and PN also exclude backslash (it separates multiple values).
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CS = re.compile(r"^[A-Z0-9 _]*$")
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_IS = re.compile(r"^[+-]?\d{1,12}$")

MAX_LEN = {"AE": 16, "CS": 16, "LO": 64, "SH": 16, "UI": 64, "PN_COMPONENT_GROUP": 64}


def require(field: str, value: str) -> str:
    """Reject an empty value for a type 1 (required, non-empty) attribute."""
    if not value:
        raise DicomOrError(field, "is required (type 1) and must not be empty")
    return value


def _text(field: str, value: str, vr: str, max_len: int, backslash_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise DicomOrError(field, f"{vr} must be a string", value)
    if len(value) > max_len:
        raise DicomOrError(field, f"{vr} allows at most {max_len} characters, got {len(value)}",
                           value)
    if _CONTROL.search(value):
        raise DicomOrError(field, f"{vr} must not contain control characters", value)
    if not backslash_ok and "\\" in value:
        raise DicomOrError(field, f"{vr} must not contain a backslash (value separator)", value)
    return value


def check_lo(field: str, value: str) -> str:
    """LO, Long String: 64 characters, no backslash, no control characters."""
    return _text(field, value, "LO", MAX_LEN["LO"])


def check_sh(field: str, value: str) -> str:
    """SH, Short String: 16 characters, no backslash, no control characters."""
    return _text(field, value, "SH", MAX_LEN["SH"])


def check_ae(field: str, value: str) -> str:
    """AE, Application Entity title: 16 characters, not only spaces, no backslash."""
    _text(field, value, "AE", MAX_LEN["AE"])
    if value and not value.strip():
        raise DicomOrError(field, "AE title must not be only spaces", value)
    return value


def check_cs(field: str, value: str) -> str:
    """CS, Code String: 16 characters of upper-case letters, digits, space and underscore."""
    _text(field, value, "CS", MAX_LEN["CS"])
    if not _CS.match(value):
        raise DicomOrError(field, "CS allows only A-Z, 0-9, space and underscore", value)
    return value


def check_ui(field: str, value: str) -> str:
    """UI, Unique Identifier: at most 64 characters of digits and dots (PS3.5 9.1).

    Components are separated by single dots and have no leading zero (except "0" itself).
    """
    if not isinstance(value, str):
        raise DicomOrError(field, "UI must be a string", value)
    if not value:
        return value
    if len(value) > MAX_LEN["UI"]:
        raise DicomOrError(field, f"UI allows at most 64 characters, got {len(value)}", value)
    if not _UID.match(value):
        raise DicomOrError(
            field, "UI must be digits separated by single dots, no leading zeros", value)
    return value


def check_pn(field: str, value: str) -> str:
    """PN, Person Name: up to 3 component groups (alphabetic=ideographic=phonetic), each of
    at most 5 components Family^Given^Middle^Prefix^Suffix and 64 characters."""
    if not isinstance(value, str):
        raise DicomOrError(field, "PN must be a string", value)
    if "\\" in value or _CONTROL.search(value.replace("\x1b", "")):
        raise DicomOrError(field, "PN must not contain a backslash or control characters",
                           value)
    groups = value.split("=")
    if len(groups) > 3:
        raise DicomOrError(field, "PN has at most 3 component groups separated by '='", value)
    for group in groups:
        if len(group) > MAX_LEN["PN_COMPONENT_GROUP"]:
            raise DicomOrError(field, "PN component group allows at most 64 characters", value)
        if group.count("^") > 4:
            raise DicomOrError(
                field, "PN has at most 5 components Family^Given^Middle^Prefix^Suffix", value)
    return value


def check_da(field: str, value: str) -> str:
    """DA, Date: YYYYMMDD, a real calendar date."""
    if not value:
        return value
    if not isinstance(value, str) or not _DA.match(value):
        raise DicomOrError(field, "DA must be YYYYMMDD", value)
    try:
        _dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise DicomOrError(field, "DA is not a calendar date", value) from None
    return value


def check_tm(field: str, value: str) -> str:
    """TM, Time: HH[MM[SS[.F{1,6}]]], 24-hour clock (seconds up to 60 for a leap second)."""
    if not value:
        return value
    m = _TM.match(value) if isinstance(value, str) else None
    if not m:
        raise DicomOrError(field, "TM must be HH[MM[SS[.FFFFFF]]]", value)
    hh, mm, ss = (int(g) if g else 0 for g in m.groups()[:3])
    if hh > 23 or mm > 59 or ss > 60:
        raise DicomOrError(field, "TM hour, minute or second out of range", value)
    return value


def check_dt(field: str, value: str) -> str:
    """DT, Date Time: YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]."""
    if not value:
        return value
    m = _DT.match(value) if isinstance(value, str) else None
    if not m:
        raise DicomOrError(field, "DT must be YYYYMMDDHHMMSS[.FFFFFF][&ZZXX]", value)
    return value


def check_is(field: str, value: int) -> int:
    """IS, Integer String: a 32-bit signed integer."""
    if not isinstance(value, int) or isinstance(value, bool) or not -2**31 <= value < 2**31:
        raise DicomOrError(field, "IS must be a 32-bit signed integer", value)
    return value


def check_ds(field: str, value: float) -> float:
    """DS, Decimal String: a finite number that fits 16 characters when written."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DicomOrError(field, "DS must be a number", value)
    if value != value or value in (float("inf"), float("-inf")):
        raise DicomOrError(field, "DS must be finite", value)
    return float(value)


def format_da(moment: _dt.datetime) -> str:
    """A datetime's date as DA."""
    return moment.strftime("%Y%m%d")


def format_tm(moment: _dt.datetime) -> str:
    """A datetime's time as TM with microseconds."""
    return moment.strftime("%H%M%S.%f")


def format_dt(moment: _dt.datetime) -> str:
    """A datetime as DT with microseconds and, when aware, its UTC offset."""
    text = moment.strftime("%Y%m%d%H%M%S.%f")
    if moment.utcoffset() is not None:
        text += moment.strftime("%z")
    return text
