"""Long fuzz run of the bridge SCP: thousands of hostile cases against a child-process SCP,
TLS off and on, with a C-ECHO + C-FIND health probe after every batch.

    tools/with_env python bench/fuzz_bridge.py [--cases 2000] [--seed N] [--tls both|on|off]

``--cases`` is per family (raw PDUs, malformed identifiers, hostile wild cards, half-open
connections, stalled peers, floods) and TLS mode. Prints per family: cases run, the
maximum answer time of a fuzz request, the maximum probe time (and how many exceeded 1 s),
the SCP's RSS (start, max, last quarter of the run = the plateau), failures, and the
tracebacks pynetdicom logged about undecodable PDUs. The case generators are those of
``src/dicom_or_bridge/test/test_fuzz.py`` (its ``make test`` run is the same with ~40 cases
per family). Exit 1 when a probe or a case failed, or the project's code logged a traceback.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "src" / "dicom_or_bridge" / "test"
sys.path.insert(0, str(TESTS))

import test_fuzz as fz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per family and mode")
    parser.add_argument("--seed", type=int, default=fz.SEED)
    parser.add_argument("--tls", choices=("both", "on", "off"), default="both")
    args = parser.parse_args()
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.tls]
    failed = False
    for tls in modes:
        label = "tls" if tls else "tcp"
        with tempfile.TemporaryDirectory(prefix="dicom_or_fuzz_") as folder, \
                fz.child_scp(Path(folder), tls=tls) as child:
            total = fz.Report()
            start = time.monotonic()
            for family in fz.FAMILIES:
                report = fz.run_family(child, family, args.cases, args.seed, fail_fast=False)
                print(report.line(child, f"{label} {family}"), flush=True)
                for failure in report.failures[:5]:
                    print(f"  FAILED {failure}")
                failed |= bool(report.failures)
                total.cases += report.cases
                total.probes += report.probes
                total.max_answer_s = max(total.max_answer_s, report.max_answer_s)
                total.max_probe_s = max(total.max_probe_s, report.max_probe_s)
                total.late_probes += report.late_probes
            print(total.line(child, f"{label} ALL ({time.monotonic() - start:.0f} s)"))
            for head, count in sorted(child.pynetdicom_tracebacks().items()):
                print(f"  pynetdicom-internal traceback x{count}: {head}")
            traces = child.tracebacks()
            if traces:
                failed = True
                print(f"  {len(traces)} tracebacks from the project's code, first:\n"
                      f"{traces[0]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
