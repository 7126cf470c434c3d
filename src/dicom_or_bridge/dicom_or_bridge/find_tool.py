"""``dicom_or_find``: find live OR streams through DICOM, then subscribe to one over ROS 2.

    dicom_or_find [--host H] [--port P] [--aec DICOM_OR] [--modality ES]
    dicom_or_find --subscribe 1 [--duration 5]          # row 1 of the table
    dicom_or_find --subscribe 'ros2:/or/endoscope/frames?type=...&qos=video&domain=0'

The search is plain DICOM (Study Root C-FIND at STUDY level, then SERIES level per study,
PS3.4 C.6.2), so it works against the bridge or any PACS; a Series whose Retrieve URL
(0008,1190) is a ``ros2:`` URI is a live stream, and ``--subscribe`` opens exactly the
topic, type, QoS profile and DDS domain that URI names and reports the measured rate:
the loop DICOM discovery -> ROS data. Exit code 0 on success, 1 when nothing matched or
nothing arrived, 2 on a usage or network error.
"""

from __future__ import annotations

import argparse
import importlib
import ssl
import sys
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import sop_class as sc
from pynetdicom.association import Association

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.ros2_uri import Ros2Uri, parse

FIND = sc.StudyRootQueryRetrieveInformationModelFind
SERIES_KEYS = ("SeriesInstanceUID", "SeriesNumber", "Modality", "SeriesDescription",
               "SeriesDate", "SeriesTime", "Manufacturer", "StationName", "Rows", "Columns",
               "RecommendedDisplayFrameRate", "SamplingFrequency", "NumberOfWaveformChannels",
               "NumberOfSeriesRelatedInstances", "InstanceAvailability", "RetrieveURL")


class FindError(Exception):
    """The peer could not be asked (association refused, failure status, timeout)."""


@dataclass
class Peer:
    """The bridge to ask: address, AE titles, timeout and the TLS CA (empty: plain TCP)."""

    host: str = "127.0.0.1"
    port: int = 11112
    called_ae_title: str = "DICOM_OR"
    calling_ae_title: str = "DICOM_OR_FIND"
    timeout_s: float = 10.0
    tls_ca: str = ""


def _c_find(assoc: Association, identifier: Dataset) -> list[Dataset]:
    """The identifiers of every pending C-FIND response, or FindError on a failure status."""
    answers = []
    for status, answer in assoc.send_c_find(identifier, FIND):
        if not status:
            raise FindError("no C-FIND response (timeout or abort)")
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if answer is None:   # a pending response always carries one (PS3.4 C.4.1.1.3)
                raise FindError("pending C-FIND response without an identifier")
            answers.append(answer)
        elif code != 0:
            raise FindError(f"C-FIND failed: status 0x{code:04X} "
                            f"{status.get('ErrorComment', '')}")
    return answers


def find_series(peer: Peer, modality: str = "", study_uid: str = "") -> list[Dataset]:
    """SERIES-level answers of every study (or of ``study_uid``), filtered by modality."""
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout_s
    ae.add_requested_context(FIND)
    tls = None
    if peer.tls_ca:
        tls = (ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=peer.tls_ca),
               peer.host)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_ae_title, tls_args=tls)
    if not assoc.is_established:
        raise FindError(f"no association with {peer.called_ae_title}@{peer.host}:{peer.port}")
    try:
        if study_uid:
            studies = [study_uid]
        else:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            studies = [str(a.StudyInstanceUID) for a in _c_find(assoc, query)]
        series = []
        for uid in studies:
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = uid
            for keyword in SERIES_KEYS:
                setattr(query, keyword, None)
            query.Modality = modality
            series.extend(_c_find(assoc, query))
        return series
    finally:
        if assoc.is_established:
            assoc.release()


def _cell(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def rate_and_geometry(ds: Dataset) -> str:
    """Rate or geometry column: "WxH @ N fps" for video, "N ch @ F Hz" for waveforms."""
    if _cell(ds, "Rows"):
        return f"{_cell(ds, 'Columns')}x{_cell(ds, 'Rows')} @ " \
               f"{_cell(ds, 'RecommendedDisplayFrameRate')} fps"
    if _cell(ds, "SamplingFrequency"):
        return f"{_cell(ds, 'NumberOfWaveformChannels')} ch @ " \
               f"{float(_cell(ds, 'SamplingFrequency')):g} Hz"
    return ""


def table(series: list[Dataset]) -> str:
    """The answers as a fixed-width text table, one numbered row per Series."""
    header = ("#", "Modality", "Description", "Rate / geometry", "Inst", "Retrieve URL")
    rows = [header]
    for index, ds in enumerate(series, 1):
        rows.append((str(index), _cell(ds, "Modality"), _cell(ds, "SeriesDescription"),
                     rate_and_geometry(ds), _cell(ds, "NumberOfSeriesRelatedInstances"),
                     _cell(ds, "RetrieveURL")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def message_class(type_name: str) -> type:
    """The Python class of a ROS interface type ``pkg/msg/Name``."""
    package, kind, name = type_name.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError):
        raise DicomOrError("type", "message type is not installed here", type_name) from None


def measure_rate(uri: Ros2Uri, duration_s: float,
                 wait_s: float = 10.0) -> tuple[int, float, float | None]:
    """Subscribe as ``uri`` says: (messages, rate Hz, seconds to the first message).

    Waits up to ``wait_s`` for the first message (DDS discovery between processes usually
    takes 0.1-0.3 s but can take a few seconds when the first announcements are missed),
    then counts for ``duration_s``.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from dicom_or_ros.qos import adapt_request_to_offers, named_qos
    from dicom_or_ros.runtime import apply_transport_defaults

    apply_transport_defaults()
    cls = message_class(uri.message_type)
    context = Context()
    rclpy.init(context=context, domain_id=uri.domain_id)
    stamps: list[float] = []
    try:
        node = rclpy.create_node("dicom_or_find", context=context)
        node.create_subscription(cls, uri.topic, lambda _m: stamps.append(time.monotonic()),
                                 adapt_request_to_offers(node, uri.topic,
                                                         named_qos(uri.qos_profile)))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        start = time.monotonic()
        while not stamps and time.monotonic() - start < wait_s:
            executor.spin_once(timeout_sec=0.05)
        while stamps and time.monotonic() - stamps[0] < duration_s:
            executor.spin_once(timeout_sec=0.05)
        executor.shutdown()
        node.destroy_node()
    finally:
        context.try_shutdown()
    if len(stamps) < 2:
        return len(stamps), 0.0, (stamps[0] - start if stamps else None)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return len(stamps), rate, stamps[0] - start


def main(argv: list[str] | None = None) -> int:
    """Run dicom_or_find: C-FIND Series into a table, then optionally subscribe to one row."""
    parser = argparse.ArgumentParser(prog="dicom_or_find", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11112)
    parser.add_argument("--aec", default="DICOM_OR", help="called AE title (the bridge)")
    parser.add_argument("--aet", default="DICOM_OR_FIND", help="our calling AE title")
    parser.add_argument("--modality", default="", help="Modality key, wildcards allowed")
    parser.add_argument("--study", default="", help="StudyInstanceUID (default: all)")
    parser.add_argument("--tls-ca", default="", help="CA/certificate file: use DICOM TLS")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--subscribe", default="",
                        help="row number of the table, or a ros2: URI")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds to measure the rate, from the first message")
    parser.add_argument("--wait", type=float, default=10.0,
                        help="seconds to wait for the first message")
    args = parser.parse_args(argv)
    try:
        if args.subscribe.startswith("ros2:"):
            uri = parse(args.subscribe)
        else:
            peer = Peer(args.host, args.port, args.aec, args.aet, args.timeout, args.tls_ca)
            series = find_series(peer, args.modality, args.study)
            print(table(series))
            if not args.subscribe:
                return 0 if series else 1
            if not args.subscribe.isdigit() or not 1 <= int(args.subscribe) <= len(series):
                print(f"--subscribe: no row {args.subscribe!r}", file=sys.stderr)
                return 2
            url = _cell(series[int(args.subscribe) - 1], "RetrieveURL")
            if not url:
                print("that series has no ros2: Retrieve URL (not live)", file=sys.stderr)
                return 1
            uri = parse(url)
        print(f"subscribing to {uri.topic} ({uri.message_type}, QoS '{uri.qos_profile}', "
              f"domain {uri.domain_id}) for {args.duration:g} s", flush=True)
        count, rate, first = measure_rate(uri, args.duration, args.wait)
        first_text = f"{first:.3f} s" if first is not None else "never"
        print(f"received {count} messages, {rate:.2f} Hz, first after {first_text}")
        return 0 if count else 1
    except (FindError, DicomOrError, OSError) as exc:
        print(f"dicom_or_find: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
