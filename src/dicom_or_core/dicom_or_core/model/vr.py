"""Value Representation rules of PS3.5 section 6.2 for the VRs the context uses.

Each ``check_*`` returns the value unchanged when it is valid and raises
:class:`~dicom_or_core.model.errors.DicomOrError` naming ``field`` otherwise. Empty strings are
valid everywhere (a type 2 attribute is then sent zero-length); whether a field is
*required* is the caller's rule, checked with :func:`require`.

What pydicom checks, pydicom decides: every ``check_*`` runs
``pydicom.valuerep.validate_value(vr, value, config.RAISE)`` (its maximum lengths, AE and CS
character sets, UI syntax, PN groups and group length, DA / TM / DT syntax with field
ranges), and only chooses the message. The rules pydicom 3.0.2 lacks are the project's:

* values are ``str`` (pydicom also takes bytes);
* LO, SH: no control characters, no backslash (pydicom checks only the length);
* AE: no backslash, not only spaces (pydicom takes any printable ASCII);
* PN: no backslash or control characters (ESC allowed), at most 5 components per group;
* DA, TM, DT: one value, not a query range (pydicom's patterns accept ``A-B`` ranges and a
  padding space); DA a real calendar date (pydicom accepts 20230231);
* IS, DS: the context holds Python numbers; pydicom validates their written form (DS as
  pydicom's ``format_number_as_ds`` writes it, which also refuses NaN and infinity), the
  32-bit range of IS is the project's.
"""

from __future__ import annotations

import datetime as _dt
import re

from pydicom import config as _pydicom_config
from pydicom.valuerep import MAX_VALUE_LEN, format_number_as_ds, validate_value

from dicom_or_core.model.errors import DicomOrError

# PS3.5 6.2: the default character repertoire excludes control characters other than ESC;
# LO, SH and PN also exclude backslash (it separates multiple values).
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
# One value, not a range (the shapes; pydicom checks the field ranges).
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2})?(\d{2})?(\.\d{1,6})?$")
_DT = re.compile(r"^\d{4}(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
PN_MAX_COMPONENTS = 5


def _pydicom_valid(vr: str, value: object) -> bool:
    """pydicom's PS3.5 check of ``value`` for ``vr``."""
    try:
        validate_value(vr, value, _pydicom_config.RAISE)
    except ValueError:
        return False
    return True


def require(field: str, value: str) -> str:
    """Reject an empty value for a type 1 (required, non-empty) attribute."""
    if not value:
        raise DicomOrError(field, "is required (type 1) and must not be empty")
    return value


def _text(field: str, value: str, vr: str, backslash_ok: bool = False) -> bool:
    """The checks every string VR shares; returns pydicom's verdict for the VR-specific
    message of the caller."""
    if not isinstance(value, str):
        raise DicomOrError(field, f"{vr} must be a string", value)
    valid = _pydicom_valid(vr, value)
    max_len = MAX_VALUE_LEN[vr]
    if not valid and len(value) > max_len:
        raise DicomOrError(field, f"{vr} allows at most {max_len} characters, got {len(value)}",
                           value)
    if _CONTROL.search(value):
        raise DicomOrError(field, f"{vr} must not contain control characters", value)
    if not backslash_ok and "\\" in value:
        raise DicomOrError(field, f"{vr} must not contain a backslash (value separator)", value)
    return valid


def check_lo(field: str, value: str) -> str:
    """LO, Long String: 64 characters, no backslash, no control characters."""
    _text(field, value, "LO")
    return value


def check_sh(field: str, value: str) -> str:
    """SH, Short String: 16 characters, no backslash, no control characters."""
    _text(field, value, "SH")
    return value


def check_ae(field: str, value: str) -> str:
    """AE, Application Entity title: 16 characters of printable ASCII, not only spaces, no
    backslash."""
    if not _text(field, value, "AE"):
        raise DicomOrError(field, "AE allows only printable ASCII characters", value)
    if value and not value.strip():
        raise DicomOrError(field, "AE title must not be only spaces", value)
    return value


def check_cs(field: str, value: str) -> str:
    """CS, Code String: 16 characters of upper-case letters, digits, space and underscore."""
    if not _text(field, value, "CS"):
        raise DicomOrError(field, "CS allows only A-Z, 0-9, space and underscore", value)
    return value


def check_ui(field: str, value: str) -> str:
    """UI, Unique Identifier: at most 64 characters of digits and dots (PS3.5 9.1).

    Components are separated by single dots and have no leading zero (except "0" itself).
    """
    if not isinstance(value, str):
        raise DicomOrError(field, "UI must be a string", value)
    if _pydicom_valid("UI", value):
        return value
    if len(value) > MAX_VALUE_LEN["UI"]:
        raise DicomOrError(field, f"UI allows at most 64 characters, got {len(value)}", value)
    raise DicomOrError(field, "UI must be digits separated by single dots, no leading zeros",
                       value)


def check_pn(field: str, value: str) -> str:
    """PN, Person Name: up to 3 component groups (alphabetic=ideographic=phonetic), each of
    at most 5 components Family^Given^Middle^Prefix^Suffix and 64 characters."""
    if not isinstance(value, str):
        raise DicomOrError(field, "PN must be a string", value)
    if "\\" in value or _CONTROL.search(value.replace("\x1b", "")):
        raise DicomOrError(field, "PN must not contain a backslash or control characters",
                           value)
    groups = value.split("=")
    if not _pydicom_valid("PN", value):
        if len(groups) > 3:
            raise DicomOrError(field, "PN has at most 3 component groups separated by '='",
                               value)
        raise DicomOrError(field, "PN component group allows at most 64 characters", value)
    if any(group.count("^") >= PN_MAX_COMPONENTS for group in groups):
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
        if not _pydicom_valid("DA", value):
            raise ValueError(value)
        _dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise DicomOrError(field, "DA is not a calendar date", value) from None
    return value


def check_tm(field: str, value: str) -> str:
    """TM, Time: HH[MM[SS[.F{1,6}]]], 24-hour clock (seconds up to 60 for a leap second)."""
    if not value:
        return value
    if not isinstance(value, str) or not _TM.match(value):
        raise DicomOrError(field, "TM must be HH[MM[SS[.FFFFFF]]]", value)
    if not _pydicom_valid("TM", value):
        whole = value.partition(".")[0]
        if whole != value and _pydicom_valid("TM", whole):
            raise DicomOrError(field, "TM has a fraction only after the seconds", value)
        raise DicomOrError(field, "TM hour, minute or second out of range", value)
    return value


def check_dt(field: str, value: str) -> str:
    """DT, Date Time: YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]."""
    if not value:
        return value
    if not isinstance(value, str) or not _DT.match(value):
        raise DicomOrError(field, "DT must be YYYYMMDDHHMMSS[.FFFFFF][&ZZXX]", value)
    if not _pydicom_valid("DT", value):
        raise DicomOrError(field, "DT month, day, hour, minute, second or offset out of "
                           "range, or a fraction without seconds", value)
    return value


def check_is(field: str, value: int) -> int:
    """IS, Integer String: a 32-bit signed integer (written in at most 12 characters)."""
    if not isinstance(value, int) or isinstance(value, bool) or not -2**31 <= value < 2**31 \
            or not _pydicom_valid("IS", str(value)):
        raise DicomOrError(field, "IS must be a 32-bit signed integer", value)
    return value


def check_ds(field: str, value: float) -> float:
    """DS, Decimal String: a finite number that fits 16 characters when written."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DicomOrError(field, "DS must be a number", value)
    try:
        written = format_number_as_ds(float(value))
    except ValueError:  # NaN or infinity: no DS can hold it
        raise DicomOrError(field, "DS must be finite", value) from None
    if not _pydicom_valid("DS", written):
        raise DicomOrError(field, "DS does not fit 16 characters", value)
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
