"""dicom_or_core.model.vr on pydicom's validate_value against the hand-written checks it
replaced (vr_before_pydicom): same verdict and same message on a corpus of real and
generated values, except where pydicom enforces PS3.5 more strictly than the old code did
(listed in STRICTER and checked to be refused)."""

from __future__ import annotations

import random
import string

import pytest
import vr_before_pydicom as old

from dicom_or_core.model import vr as new
from dicom_or_core.model.errors import DicomOrError

CHECKS = ["lo", "sh", "ae", "cs", "ui", "pn", "da", "tm", "dt", "is", "ds"]

# Real values: what the examples, the worklist and the recorder write.
REAL = {
    "lo": ["PID-0001", "Hospital of the Ward", "Ünïcödé São Paulo", "", "x" * 64],
    "sh": ["OR-3", "ACC123", "", "mm[Hg]", "uV", "s" * 16],
    "ae": ["DICOM_OR", "DICOM_OR_REC", "ORTHANC", "STORESCP", "A" * 16, ""],
    "cs": ["ES", "ECG", "HD", "RESP", "SR", "ABDOMEN", "M", "F", "O", "", "ORIGINAL"],
    "ui": ["1.2.826.0.1.3680043.8.498.12345678901234567890", "1.2.3", "0", "1.0.2", ""],
    "pn": ["Doe^Jane", "Doe^Jane^M^Dr^PhD", "Yamada^Tarou=山田^太郎=やまだ^たろう", "",
           "Doe^Jane\x1b$B"],
    "da": ["20261125", "19700101", "20240229", ""],
    "tm": ["101500", "1015", "10", "235959.999999", "235960", "000000.1", ""],
    "dt": ["20261125101500.123456+0100", "2026", "202611", "20261125", "2026112510",
           "20261125101500", "20261125101500-0500", ""],
    "is": [0, 1, -1, 2**31 - 1, -2**31, 7],
    "ds": [0.0, 1.5, -2.25, 1e-9, 123456789.123, 0.1 + 0.2, 1e300, 40, 33.3],
}

# Where pydicom's PS3.5 check is stricter than the old one: (check, value, why).
STRICTER = [
    ("ae", "ÉCRAN", "AE is the default repertoire: ASCII only"),
    ("tm", "10.5", "a fraction only after seconds"),
    ("tm", "1015.5", "a fraction only after seconds"),
    ("dt", "20261325", "month 13"),
    ("dt", "2026112524", "hour 24"),
    ("dt", "2026.5", "a fraction only after seconds"),
    ("dt", "20261125101500+2400", "offset hour 24"),
]


def _verdict(module, check: str, value: object) -> str:
    try:
        getattr(module, f"check_{check}")("f", value)
    except DicomOrError as exc:
        return str(exc)
    return "ok"


def _generated(check: str, rng: random.Random) -> list[object]:
    if check == "is":
        return [rng.randint(-2**40, 2**40) for _ in range(300)] + [True, 1.5, "7"]
    if check == "ds":
        return [rng.uniform(-1e6, 1e6) for _ in range(200)] + \
            [float("nan"), float("inf"), -float("inf"), True, "1.5", 10**20, 2**70]
    alphabet = {"ui": "0123456789..", "da": "0123456789-", "tm": "0123456789.-",
                "dt": "0123456789.+-"}.get(check, string.printable + "\\^=é\x1b")
    values: list[object] = []
    for _ in range(600):
        length = rng.choice([0, 1, 2, 4, 6, 8, 10, 14, 16, 17, 26, 63, 64, 65, 70])
        values.append("".join(rng.choice(alphabet) for _ in range(length)))
    return values + [b"bytes", None, 5]


@pytest.mark.parametrize("check", CHECKS)
def test_same_verdict_and_message_as_the_old_checks(check):
    rng = random.Random(check)
    stricter = {value for c, value, _ in STRICTER if c == check}
    compared = 0
    for value in REAL[check] + _generated(check, rng):
        if value in stricter:
            continue
        before, after = _verdict(old, check, value), _verdict(new, check, value)
        if before != after and (before == "ok") != (after == "ok"):
            # Only where pydicom is stricter, and never the other way round.
            assert before == "ok", (value, before, after)
            assert _pydicom_refuses(check, after), (value, after)
            continue
        assert before == after, (value, before, after)
        compared += 1
    assert compared > 100
    for value in REAL[check]:
        assert _verdict(new, check, value) == "ok", value


def _pydicom_refuses(check: str, message: str) -> bool:
    """The new check refused a value the old one took: only for a PS3.5 rule pydicom checks
    and the old code did not (AE repertoire, TM / DT field ranges and fraction placement)."""
    return any(text in message for text in {
        "ae": ["AE allows only printable ASCII"],
        "tm": ["TM has a fraction only after the seconds"],
        "dt": ["DT month, day, hour, minute, second or offset out of range"],
    }.get(check, []))


@pytest.mark.parametrize("check,value,why", STRICTER)
def test_pydicom_refuses_what_the_old_checks_let_through(check, value, why):
    assert _verdict(old, check, value) == "ok", why
    assert _pydicom_refuses(check, _verdict(new, check, value)), why
