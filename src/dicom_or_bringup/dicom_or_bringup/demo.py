"""dicom_or_demo: the OR demo in one command (what ``make demo`` runs).

1. A Modality Worklist SCP (dcmtk ``wlmscpfs``) serving the demo case from
   ``config/worklist/`` when dcmtk is installed; otherwise the session context comes from
   ``config/session_context.yaml``.
2. ``launch/or_demo.launch.yaml`` through :mod:`dicom_or_bringup.graph` (the file
   ``ros2 launch dicom_or_bringup or_demo.launch.yaml`` runs): endoscope, tracker, patient
   monitor, session context, DICOM bridge on 127.0.0.1:11112 (AE ``DICOM_OR``; DICOMweb at
   http://127.0.0.1:8080/dicom-web), recorder writing to ``./recordings``, and the OR view
   (dicom_or_view) whose URL, http://127.0.0.1:8090/, is printed.
3. A live status table until Ctrl-C or ``--duration``.
4. At the end: the bridge's C-FIND answer for the session (the streams as DICOM sees them),
   then, after an orderly stop, every recorded object with its dciodvfy verdict.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from dicom_or_bringup import graph
from dicom_or_bringup.launcher import (
    STOPPED_CLEANLY,
    ProcessGroup,
    StopSignals,
    parse_launch_arguments,
    wait,
)
from dicom_or_bringup.peer_tools import dciodvfy, free_tcp_port, have, run_tool
from dicom_or_core.config.paths import config_dir
from dicom_or_core.model.errors import DicomOrError

WORKLIST_AE = "OR_DEMO_WL"


def start_worklist(workdir: Path) -> tuple[subprocess.Popen, int] | None:
    """wlmscpfs serving the demo worklist items (text dumps -> .wl files with dump2dcm)."""
    dumps = sorted((config_dir() / "worklist").glob("*.dump"))
    if not dumps or not (have("wlmscpfs") and have("dump2dcm")):
        return None
    folder = workdir / WORKLIST_AE
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()  # wlmscpfs only serves a folder that has one
    today = datetime.date.today().strftime("%Y%m%d")
    for dump in dumps:
        # The demo cases are scheduled for today, whatever day the demo runs.
        text = re.sub(r"(\(0040,0002\) DA \[)\d{8}(\])", rf"\g<1>{today}\g<2>",
                      dump.read_text())
        dated = workdir / dump.name
        dated.write_text(text)
        result = run_tool(["dump2dcm", "--write-dataset", str(dated),
                           str(folder / f"{dump.stem}.wl")])
        if result.returncode != 0:
            print(f"demo: dump2dcm {dump.name} failed: {result.stderr.strip()}",
                  file=sys.stderr)
            return None
    port = free_tcp_port()
    proc = subprocess.Popen(["wlmscpfs", "-dfp", str(workdir), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def status_thread(env: dict[str, str], stop: threading.Event) -> threading.Thread:
    """Run or_status as a child so its DDS participant lives in the demo's domain."""

    def run() -> None:
        proc = subprocess.Popen(["or_status"], env=env)
        stop.wait()
        proc.terminate()
        proc.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def dicomweb_url(given: dict[str, str]) -> str:
    """The bridge's DICOMweb base URL (plain HTTP, the shipped prefix), or "off"."""
    port = int(given["dicomweb_port"])
    if port < 0:
        return "off"
    return f"http://{given['bridge_host']}:{port or '<any free port>'}/dicom-web"


def view_url(given: dict[str, str]) -> str:
    """The OR view's page (launch/view.launch.yaml's defaults unless given), or "off"."""
    if given.get("use_view", "true").lower() in ("false", "0"):
        return "off"
    host = given.get("view_host", "127.0.0.1")
    host = "127.0.0.1" if host == "0.0.0.0" else host
    port = int(given.get("view_port", "8090"))
    return f"http://{host}:{port or '<any free port>'}/"


def show_session(host: str, port: int, ae: str) -> bool:
    """Print the bridge's SERIES-level C-FIND answer (dicom_or_find)."""
    print(f"\n== The session as DICOM sees it: C-FIND SERIES at {ae}@{host}:{port} ==")
    result = subprocess.run(["dicom_or_find", "--host", host, "--port", str(port),
                             "--aec", ae], capture_output=True, text=True, timeout=60)
    print(result.stdout.rstrip() or result.stderr.rstrip())
    return result.returncode == 0


def show_recordings(output: Path) -> bool:
    """List recorded instances with their dciodvfy verdict; True if all have 0 errors."""
    files = sorted(output.rglob("*.dcm"))
    print(f"\n== Recorded objects in {output}/ ({len(files)}) ==")
    ok = True
    validator = have("dciodvfy")
    for path in files:
        if validator:
            errors, lines = dciodvfy(path)
            verdict = "dciodvfy: 0 errors" if errors == 0 else f"dciodvfy: {errors} errors"
            ok = ok and errors == 0
        else:
            verdict = "(dciodvfy not installed)"
        print(f"  {path.relative_to(output)}  {path.stat().st_size / 1e6:8.2f} MB  {verdict}")
    return ok and bool(files)


def main(argv: list[str] | None = None) -> int:
    """``dicom_or_demo [--duration S] [--output DIR] [name:=value ...]``: 0 only when the
    bridge found the session, every recording passed dciodvfy and every node stopped cleanly."""
    parser = argparse.ArgumentParser(prog="dicom_or_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, help="seconds to run (default: until "
                        "Ctrl-C)")
    parser.add_argument("--output", default="recordings", help="recordings folder")
    parser.add_argument("arguments", nargs="*", help="more launch arguments name:=value")
    options = parser.parse_args(argv)
    if options.duration is not None and options.duration <= 0:
        print("dicom_or_demo: --duration must be greater than 0", file=sys.stderr)
        return 1
    output = Path(options.output).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="dicom_or_demo_"))
    given = {"output_dir": str(output), "bridge_host": "127.0.0.1", "bridge_port": "11112",
             "bridge_ae": "DICOM_OR", "dicomweb_port": "8080"}
    worklist = start_worklist(workdir)
    if worklist is not None:
        given.update(context_source="worklist", worklist_host="127.0.0.1",
                     worklist_port=str(worklist[1]), worklist_ae=WORKLIST_AE)
        print(f"demo: worklist SCP (wlmscpfs) on 127.0.0.1:{worklist[1]} AE {WORKLIST_AE}")
    else:
        print("demo: dcmtk not installed; session context from config/session_context.yaml")
    try:
        given.update(parse_launch_arguments(options.arguments))
        specs = graph.resolve("or_demo", given)
        group = ProcessGroup(specs, log_dir=workdir / "logs")
        signals = StopSignals()
        group.start()
    except DicomOrError as exc:
        print(f"dicom_or_demo: {exc}", file=sys.stderr)
        if worklist is not None:
            worklist[0].terminate()
        return 1
    print(f"demo: {len(specs)} nodes started, logs in {workdir / 'logs'}; bridge "
          f"{given['bridge_ae']}@{given['bridge_host']}:{given['bridge_port']}, DICOMweb "
          f"{dicomweb_url(given)}; Ctrl-C to stop")
    print(f"demo: OR view (open in a browser): {view_url(given)}")
    stop = threading.Event()
    status_thread(dict(os.environ), stop)
    reason = wait(group, options.duration, signals)
    stop.set()
    found = show_session(given["bridge_host"], int(given["bridge_port"]), given["bridge_ae"])
    print(f"\ndemo: stopping ({reason}); the recorder finalises its files")
    codes = group.stop()
    # The stop handlers stay until the process ends: a second Ctrl-C while the nodes
    # stop (or while the results print) must not turn into a KeyboardInterrupt.
    stopped = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in
                        sorted(group.stop_seconds.items(), key=lambda item: -item[1]))
    print(f"demo: stop times: {stopped}")
    if worklist is not None:
        worklist[0].terminate()
        worklist[0].wait()
    failed = {n: c for n, c in codes.items() if c not in STOPPED_CLEANLY}
    for name, code in failed.items():
        print(f"demo: node {name} exited with {code}; see {workdir / 'logs' / name}.log",
              file=sys.stderr)
    valid = show_recordings(output)
    print(f"\ndemo: recordings in {output}; node logs in {workdir / 'logs'}")
    if not failed:
        shutil.rmtree(workdir / WORKLIST_AE, ignore_errors=True)
    return 0 if (found and valid and not failed and not reason.startswith("node ")) else 1


if __name__ == "__main__":
    sys.exit(main())
