#!/usr/bin/env python3
"""make bench: run every benchmark in bench/ and write one results file.

Each benchmark prints its own table next to a reference measured in the same run (raw
socket, dcmtk, Orthanc, ffmpeg). This runner adds the machine's description and collects
the outputs into bench/results/results-<UTC time>.txt (and latest.txt).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB, "
            f"{platform.platform()}, Python {platform.python_version()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's short mode")
    parser.add_argument("--only", help="run only benchmarks whose file name contains this")
    options = parser.parse_args()
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != "run_all.py"
                     and (not options.only or options.only in p.name))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    report = [f"dicom_or benchmarks, {stamp}", machine(), ""]
    failed = []
    for script in scripts:
        command = [sys.executable, str(script)] + (["--quick"] if options.quick else [])
        print(f"== {script.name}", flush=True)
        result = subprocess.run(command, capture_output=True, text=True)
        print(result.stdout, end="", flush=True)
        report += [f"== {script.name} (exit {result.returncode})", result.stdout]
        if result.returncode != 0:
            failed.append(script.name)
            report.append(result.stderr[-4000:])
            print(result.stderr[-4000:], file=sys.stderr)
    text = "\n".join(report)
    (out_dir / f"results-{stamp}.txt").write_text(text)
    (out_dir / "latest.txt").write_text(text)
    print(f"results written to {out_dir / f'results-{stamp}.txt'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
