"""Compressed video end to end, as a user runs it: ``dicom_or_launch or_demo
video_transport:=h264`` (the endoscope driver encodes H.264 where the camera is, the
recorder stores the packets without re-encoding). A test subscriber captures every
VideoPacket the driver publishes; after a recorder STOP the stored instance's elementary
stream is byte-identical to the captured packets from its first key frame on, dciodvfy
finds no error, the recorder delivers it to Orthanc by C-STORE and Orthanc indexes it; a
SNAPSHOT of the compressed stream (decoded since the last key frame) is stored too."""

from __future__ import annotations

import io
import threading

import av
import pydicom
from dicom_or_test_common.peers import Orthanc, dciodvfy, free_tcp_port
from dicom_or_test_common.ros import isolated_env, ros_context, spin_until
from graph_support import start_graph, stop
from pydicom.encaps import generate_fragments
from pydicom.uid import MPEG4HP41
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from dicom_or_core.iod.h264 import is_idr
from dicom_or_msgs.msg import VideoPacket
from dicom_or_msgs.srv import RecordControl

FRAMES = "/or/endoscope/frames"
RECORD_S = 6.0


def _es(ds: pydicom.Dataset) -> bytes:
    with av.open(io.BytesIO(b"".join(generate_fragments(ds.PixelData)))) as container:
        return b"".join(bytes(p) for p in container.demux(video=0) if p.size)


def _call(executor, client, command: int) -> RecordControl.Response:
    future = client.call_async(RecordControl.Request(command=command))
    assert spin_until(executor, future.done, 30), "RecordControl did not answer"
    result = future.result()
    assert result.success, result.message
    return result


def test_h264_transport_stored_byte_identical_and_indexed_by_orthanc(tmp_path):
    archive = tmp_path / "recordings"
    captured: list[VideoPacket] = []
    lock = threading.Lock()

    def keep(msg: VideoPacket) -> None:
        with lock:
            captured.append(msg)

    with ros_context() as rctx, Orthanc(tmp_path / "orthanc") as orthanc:
        node = Node("h264_capture", context=rctx)
        # Every packet: RELIABLE (as the driver offers) with a deep history.
        node.create_subscription(VideoPacket, FRAMES, keep, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1000,
            reliability=ReliabilityPolicy.RELIABLE))
        client = node.create_client(RecordControl, "/or/recorder/control")
        executor = SingleThreadedExecutor(context=rctx)
        executor.add_node(node)
        graph = start_graph(isolated_env(rctx.domain), archive, free_tcp_port(),
                            "video_transport:=h264", "use_tracker:=false",
                            "use_monitor:=false", "use_view:=false",
                            f"pacs_port:={orthanc.dicom_port}", f"pacs_ae:={orthanc.aet}")
        try:
            assert spin_until(executor, lambda: bool(captured) or graph.poll() is not None,
                              60), "no VideoPacket published"
            assert graph.poll() is None, graph.communicate()[0][-3000:]
            # The recorder has subscribed (besides this test): record a few seconds.
            assert spin_until(executor, lambda: node.count_subscribers(FRAMES) >= 2, 60)
            spin_until(executor, lambda: False, RECORD_S)
            assert client.wait_for_service(timeout_sec=10)
            [snapshot_uid] = _call(executor, client, RecordControl.Request.SNAPSHOT) \
                .sop_instance_uids
            stopped = _call(executor, client, RecordControl.Request.STOP).sop_instance_uids
            assert len(stopped) == 1, stopped
            wanted = set(stopped) | {snapshot_uid}

            # The recorder delivers the finalised instances to Orthanc (C-STORE).
            def indexed() -> bool:
                held = {orthanc.rest("GET", f"/instances/{i}/tags?simplify")
                        ["SOPInstanceUID"] for i in orthanc.rest("GET", "/instances")}
                return wanted <= held
            assert spin_until(executor, indexed, 60), "Orthanc did not get the instances"
        finally:
            code, log = stop(graph) if graph.poll() is None else (graph.returncode,
                                                                  graph.communicate()[0])
            executor.shutdown()
            node.destroy_node()
        assert code == 0, log[-3000:]
        [path] = [p for p in archive.rglob("*.dcm") if p.stem == stopped[0]]
        ds = pydicom.dcmread(path)
        assert ds.Modality == "ES" and str(ds.file_meta.TransferSyntaxUID) == MPEG4HP41
        es = _es(ds)
        # The captured packets, in sequence order, with none missing; the instance holds
        # them from its first key frame on, unchanged.
        with lock:
            packets = sorted(captured, key=lambda m: m.context.sequence)
        sequences = [m.context.sequence for m in packets]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
        data = [bytes(m.data) for m in packets]
        n = int(ds.NumberOfFrames)
        assert n >= 3 * 15, n  # several seconds at 15 fps
        starts = [k for k in range(len(data)) if data[k][:64] == es[:64] and is_idr(data[k])]
        if starts:
            k = starts[0]
            assert b"".join(data[k:k + n]) == es
        else:
            # The recorder matched the driver before this test's subscriber did: its instance
            # starts at a key frame published before the capture began. From the first
            # captured key frame on, the instance holds the captured packets unchanged.
            j = next(k for k in range(len(data)) if is_idr(data[k]))
            at = es.find(data[j])
            assert at > 0, "no captured key frame is in the instance"
            tail = es[at:]
            assert b"".join(data[j:])[:len(tail)] == tail
        assert dciodvfy(path)[0] == 0
        snapshot = pydicom.dcmread(next(p for p in archive.rglob("*.dcm")
                                        if p.stem == snapshot_uid))
        assert (snapshot.Rows, snapshot.Columns) == (480, 640)
        assert dciodvfy(snapshot.filename)[0] == 0
        found = {orthanc.rest("GET", f"/instances/{i}/tags?simplify")["SOPInstanceUID"]: i
                 for i in orthanc.rest("GET", "/instances")}
        copy = pydicom.dcmread(io.BytesIO(orthanc.rest(
            "GET", f"/instances/{found[stopped[0]]}/file")))
        # Orthanc rewrites the File Meta Information (its own source AE), not the data set.
        assert copy.PixelData == ds.PixelData and _es(copy) == es
    print(f"\n{n} frames stored unchanged ({len(es) / 1e6:.2f} MB of H.264), "
          f"{len(data)} packets captured; Orthanc indexed the instance and the snapshot")
