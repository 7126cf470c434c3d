"""dicom_or_convert: rosbag2 / MCAP recordings into DICOM studies, and DICOM studies into MCAP.

    dicom_or_convert BAG OUTPUT [--topic T ...] [--streams streams.yaml]
                     [--context context.yaml | --patient-id ... --study-description ...
                      | --worklist HOST:PORT --worklist-aet AE [--accession A]]
                     [--video-mode auto|h264|hevc|mpeg2|lossless] [--max-segment-s S]
    dicom_or_convert --to-mcap STUDY_FOLDER OUTPUT_BAG [--study-uid UID]

BAG is a rosbag2 directory (sqlite3 or mcap storage) or a bare .mcap file; OUTPUT is a
recordings folder (``<Study>/<Series>/<SOP>.dcm``, the recorder's layout; created, or an
existing archive folder). The conversion runs offline through the recorder's own stream
recorders (same IOD builders, same segmentation, same rules), as fast as the encoder goes,
with a progress bar on stderr. See docs/convert.md.

Bad input (a missing or corrupt bag, an unknown topic, a bad stream YAML or context) is one
line on stderr and exit status 1; nothing is left half-written in OUTPUT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

from dicom_or_core.bags.plan import load_stream_specs, today_session_check
from dicom_or_core.bags.progress import ProgressBar
from dicom_or_core.bags.reader import Bag
from dicom_or_core.bags.to_dicom import ConvertOptions, ConvertReport, convert_bag
from dicom_or_core.bags.to_mcap import export_study
from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu.worklist import (
    WorklistPeer,
    WorklistSelection,
    WorklistUnavailable,
    query_worklist,
    session_from_item,
)
from dicom_or_recorder.segments import VIDEO_MODES, RecorderOptions, recorder_for

PROG = "dicom_or_convert"
# Patient / study arguments: option -> (context section, field).
CONTEXT_ARGS = {
    "patient_id": ("patient", "patient_id"), "patient_name": ("patient", "patient_name"),
    "birth_date": ("patient", "birth_date"), "sex": ("patient", "sex"),
    "study_uid": ("study", "study_instance_uid"), "accession": ("study", "accession_number"),
    "study_id": ("study", "study_id"), "study_date": ("study", "study_date"),
    "study_time": ("study", "study_time"),
    "study_description": ("study", "study_description"),
    "referring_physician": ("study", "referring_physician_name"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 1 like every bad input."""

    def error(self, message: str) -> NoReturn:
        raise DicomOrError("arguments", message)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("input", help="bag (rosbag2 directory or .mcap file), or with --to-mcap "
                   "a recordings folder")
    p.add_argument("output", help="recordings folder to write, or with --to-mcap the bag")
    p.add_argument("--to-mcap", action="store_true",
                   help="export a recorded DICOM study as a rosbag2 MCAP bag")
    p.add_argument("--topic", action="append", default=[], dest="topics",
                   help="convert only this topic (repeatable; default: every convertible)")
    p.add_argument("--streams", help="stream YAML: descriptor fields per plain topic, "
                   "waveform channels (docs/convert.md)")
    p.add_argument("--context", help="YAML with patient: and study: (context fields)")
    for name in CONTEXT_ARGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name)
    p.add_argument("--worklist", help="HOST:PORT of a Modality Worklist SCP to take the "
                   "patient and study from")
    p.add_argument("--worklist-aet", default="ANY-SCP", help="its AE title")
    p.add_argument("--calling-aet", default="DICOM_OR_CONV", help="our AE title")
    p.add_argument("--station-aet", default="", help="worklist: Scheduled Station AE Title")
    p.add_argument("--worklist-date", default="", help="worklist: scheduled date (DA)")
    p.add_argument("--video-mode", default="auto", choices=VIDEO_MODES)
    p.add_argument("--video-quality", type=int, default=18, help="CRF (default 18)")
    p.add_argument("--video-preset", default="superfast")
    p.add_argument("--max-segment-s", type=float, default=300.0,
                   help="longest instance, seconds (default 300, as the recorder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def msg_dirs() -> list[Path]:
    """Where the project's .msg definitions are installed."""
    try:
        return [Path(get_package_share_directory("dicom_or_msgs")) / "msg"]
    except PackageNotFoundError:
        raise DicomOrError("dicom_or_msgs", "is not installed (source the workspace)") \
            from None


def _context_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DicomOrError("context", f"cannot be read: {exc}", path) from None
    if not isinstance(data, dict):
        raise DicomOrError("context", "must be a mapping with patient: and study:", path)
    return data


def session_from_args(args: argparse.Namespace) -> ctx.SessionContext | None:
    """The caller's patient and study (context YAML, then the options), or None."""
    data = _context_yaml(args.context) if args.context else {}
    given = {name: getattr(args, name) for name in CONTEXT_ARGS
             if getattr(args, name) is not None}
    if not data and not given:
        return None
    for name, value in given.items():
        section, key = CONTEXT_ARGS[name]
        data.setdefault(section, {})[key] = value
    session = ctx.from_dict(ctx.SessionContext, data, "context.")
    if not session.study.study_instance_uid:
        session.study.study_instance_uid = new_uid()
    return today_session_check(session)


def session_from_worklist(args: argparse.Namespace) -> ctx.SessionContext:
    """The worklist item the options select: the only one, or the one whose Accession
    Number or Patient ID was given."""
    host, _, port = str(args.worklist).rpartition(":")
    if not host or not port.isdigit():
        raise DicomOrError("worklist", "must be HOST:PORT", args.worklist)
    peer = WorklistPeer(host, int(port), args.worklist_aet, args.calling_aet)
    selection = WorklistSelection(station_ae_title=args.station_aet,
                                  date=args.worklist_date).validate()
    try:
        items = query_worklist(peer, selection)
    except WorklistUnavailable as exc:
        raise DicomOrError("worklist", str(exc), args.worklist) from None
    if args.accession:
        items = [i for i in items if str(i.get("AccessionNumber", "")) == args.accession]
    if args.patient_id:
        items = [i for i in items if str(i.get("PatientID", "")) == args.patient_id]
    if len(items) != 1:
        raise DicomOrError("worklist", f"{len(items)} matching items; choose one with "
                           "--accession or --patient-id", args.worklist)
    return session_from_item(items[0])


def _summary(report: ConvertReport) -> str:
    lines = [f"{len(report.instances)} instance(s) in {report.output} "
             f"({report.elapsed_s:.1f} s, {report.video_frames / max(report.elapsed_s, 1e-9):.1f} "
             "video frames/s)"]
    for t in report.topics.values():
        line = f"  {t.topic} ({t.kind}): {t.messages} messages, {t.instances} instance(s)"
        if t.refused:
            line += f", {t.refused} refused (first: {t.first_error})"
        if t.unknown_series:
            line += f", {t.unknown_series} of a Series with no descriptor"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Convert as the arguments say."""
    progress = None if args.quiet else ProgressBar(PROG)
    if args.to_mcap:
        exported = export_study(args.input, args.output, msg_dirs(), args.study_uid or "",
                                progress)
        if progress is not None:
            progress.close()
        total = sum(exported.messages.values())
        print(f"{total} messages on {len(exported.messages)} topics in {exported.output}")
        return 0
    options = RecorderOptions(max_segment_s=args.max_segment_s, video_mode=args.video_mode,
                              video_quality=args.video_quality,
                              video_preset=args.video_preset).validate()
    session = session_from_worklist(args) if args.worklist else session_from_args(args)
    streams = load_stream_specs(args.streams)
    with Bag(args.input, msg_dirs()) as bag:
        report = convert_bag(bag, args.output,
                             lambda d, spool: recorder_for(d, spool, options),
                             ConvertOptions(args.topics, session, streams), progress)
    if progress is not None:
        progress.close()
    print(_summary(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit status 0, or 1 with one line on stderr for bad input."""
    try:
        return run(parser().parse_args(argv))
    except DicomOrError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"{PROG}: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
