"""OpenIGTLink server in-process on a free port, ROS-free: pyigtl's client and a raw-socket
client; order, latest state for a late client, abrupt disconnects, a client that never
reads, the per-client video rate cap, max_clients; and the pure pose / image geometry."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pyigtl
import pytest
from igtl_clients import RawClient, wait_until

from dicom_or_bridge.igtl_server import (
    IgtlImage,
    IgtlServer,
    igtl_device_name,
    pose_matrix_mm,
    video_ijk_to_ras,
)
from dicom_or_core.sim.tracker import quaternion_from_axis_angle
from dicom_or_drivers.igtl import matrix_to_quaternion


@pytest.fixture
def server() -> Iterator[IgtlServer]:
    igtl = IgtlServer("127.0.0.1", 0, client_timeout_s=2.0)
    igtl.start()
    yield igtl
    igtl.close()


def _translation(i: int) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = (i, -i / 2, 1000.0 + i)
    return matrix


def _frame(value: int, rows: int = 240, columns: int = 320) -> IgtlImage:
    pixels = np.zeros((rows, columns, 3), np.uint8)
    pixels[..., 0] = value % 256
    pixels[0, 0] = (1, 2, 3)  # the top-left pixel, to check the row/column order
    return IgtlImage(pixels, time.time())


def _clients(server: IgtlServer, n: int) -> bool:
    return wait_until(lambda: len(server.stats().clients) == n)


# --- pure helpers ---------------------------------------------------------------------------

def test_pose_matrix_is_in_millimetres_and_matches_the_quaternion() -> None:
    q = quaternion_from_axis_angle(np.array([0.2, -0.5, 1.0]), 0.7)
    matrix = pose_matrix_mm((0.1, -0.2, 1.5), q)
    np.testing.assert_allclose(matrix[:3, 3], (100.0, -200.0, 1500.0))
    np.testing.assert_allclose(matrix[:3, :3] @ matrix[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(matrix_to_quaternion(matrix[:3, :3]), q, atol=1e-12)
    np.testing.assert_allclose(matrix[3], (0, 0, 0, 1))


def test_video_geometry_centres_the_frame_and_shows_it_upright_in_the_axial_view() -> None:
    m = video_ijk_to_ras(rows=240, columns=320, spacing_mm=0.5)
    np.testing.assert_allclose(m @ (159.5, 119.5, 0, 1), (0, 0, 0, 1))
    # column i towards the viewer's right in the axial view (-R), row j downwards (-A)
    np.testing.assert_allclose(m[:3, 0], (-0.5, 0, 0))
    np.testing.assert_allclose(m[:3, 1], (0, -0.5, 0))


def test_device_names_fit_the_header_field() -> None:
    assert igtl_device_name("pointer") == "pointer"
    assert igtl_device_name("patient_reference_long_name") == "patient_reference_lo"
    assert igtl_device_name("sonde-é") == "sonde-_"


# --- the server -----------------------------------------------------------------------------

def test_transforms_arrive_in_order_with_matrix_and_acquisition_time(server) -> None:
    client = RawClient(server.port)
    try:
        assert _clients(server, 1)
        stamps = [1_790_000_000.0 + i * 0.001 for i in range(600)]
        for i, stamp in enumerate(stamps):
            server.publish_transform("pointer" if i % 2 == 0 else "reference",
                                     _translation(i), stamp)
        assert client.wait_for(lambda m: len(m) == 600)
        received = client.of_type("TRANSFORM")
        assert [m.device_name for m in received] == ["pointer", "reference"] * 300
        for i, message in enumerate(received):
            np.testing.assert_allclose(message.matrix, _translation(i), rtol=1e-6)
            assert message.timestamp_s == pytest.approx(stamps[i], abs=1e-6)
        assert server.stats().transforms_dropped == 0
    finally:
        client.close()


def test_a_late_client_gets_the_latest_state_at_once_with_pyigtl(server) -> None:
    builds: list[int] = []

    def build(value: int) -> IgtlImage:
        builds.append(value)
        return _frame(value)

    for i in range(5):
        server.publish_transform("pointer", _translation(i), time.time())
        server.publish_transform("reference", _translation(100 + i), time.time())
        server.offer_image("endoscope", lambda v=i: build(v))
    assert builds == []  # nobody connected: no frame encoded
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", server.port)
    try:
        pointer = client.wait_for_message("pointer", timeout=5)
        reference = client.wait_for_message("reference", timeout=5)
        image = client.wait_for_message("endoscope", timeout=5)
        assert pointer is not None and reference is not None and image is not None
        np.testing.assert_allclose(pointer.matrix, _translation(4), rtol=1e-6)
        np.testing.assert_allclose(reference.matrix, _translation(104), rtol=1e-6)
        assert image.image.shape == (1, 240, 320, 3)  # (k, j, i, components)
        assert image.image[0, 0, 0].tolist() == [1, 2, 3]
        assert int(image.image[0, 10, 10, 0]) == 4
        assert image.world_coordinate_system == "ras"
        np.testing.assert_allclose(image.ijk_to_world_matrix,
                                   video_ijk_to_ras(240, 320, 1.0), atol=1e-4)
        assert builds == [4]  # only the latest frame, once
    finally:
        client.stop()


def test_a_late_raw_client_gets_each_device_once_then_the_stream(server) -> None:
    for i in range(3):
        server.publish_transform("pointer", _translation(i), time.time())
    server.publish_image("endoscope", _frame(7))
    client = RawClient(server.port)
    try:
        assert client.wait_for(lambda m: len(m) >= 2)
        assert [(m.message_type, m.device_name) for m in client.messages[:2]] == \
            [("TRANSFORM", "pointer"), ("IMAGE", "endoscope")]
        np.testing.assert_allclose(client.messages[0].matrix, _translation(2), rtol=1e-6)
        server.publish_transform("pointer", _translation(3), time.time())
        assert client.wait_for(lambda m: len(m) >= 3)
        np.testing.assert_allclose(client.messages[2].matrix, _translation(3), rtol=1e-6)
    finally:
        client.close()


def _publish_for(server: IgtlServer, seconds: float, rate_hz: float,
                 image_every: int = 0) -> tuple[int, float]:
    """Publish numbered TRANSFORMs (and frames) at ``rate_hz``; returns (count, longest
    publish call in s)."""
    count, longest = 0, 0.0
    period = 1.0 / rate_hz
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        t0 = time.monotonic()
        server.publish_transform("pointer", _translation(count), time.time())
        if image_every and count % image_every == 0:
            server.publish_image("endoscope", _frame(count))
        longest = max(longest, time.monotonic() - t0)
        count += 1
        time.sleep(max(0.0, start + count * period - time.monotonic()))
    return count, longest


def _assert_all_in_order(client: RawClient, count: int) -> None:
    assert client.wait_for(lambda m: sum(x.message_type == "TRANSFORM" for x in m) >= count)
    xs = [round(m.matrix[0, 3]) for m in client.of_type("TRANSFORM")]
    assert xs == list(range(count))


def test_an_abrupt_disconnect_does_not_disturb_the_others(server) -> None:
    steady = RawClient(server.port)
    leaving = RawClient(server.port)
    try:
        assert _clients(server, 2)
        done: list[tuple[int, float]] = []
        publisher = threading.Thread(target=lambda: done.append(_publish_for(server, 1.0,
                                                                             300.0)))
        publisher.start()
        assert leaving.wait_for(lambda m: len(m) >= 10)
        leaving.reset()  # RST mid-stream
        assert wait_until(lambda: server.stats().disconnected == 1)
        publisher.join()
        count, _ = done[0]
        _assert_all_in_order(steady, count)
        assert len(server.stats().clients) == 1
    finally:
        steady.close()


def test_a_client_that_never_reads_neither_stalls_the_server_nor_the_others(server) -> None:
    server.image_period_s = 0.0  # every frame to every client: the stuck one's queue fills
    steady = RawClient(server.port)
    stuck = RawClient(server.port, read=False, rcvbuf=4096)
    try:
        assert _clients(server, 2)
        count, longest = _publish_for(server, 1.5, 200.0, image_every=5)
        _assert_all_in_order(steady, count)
        assert len(steady.of_type("IMAGE")) >= count // 5 - 5
        # Never waits for a client: a blocked send would take client_timeout_s (2 s); the
        # bound leaves room for a preempted thread on a loaded machine.
        assert longest < 0.2, f"a publish call took {longest * 1000:.1f} ms"
        stats = {c.address: c for c in server.stats().clients}
        stuck_stats = stats[f"127.0.0.1:{stuck.sock.getsockname()[1]}"]
        assert stuck_stats.images_dropped > 0  # latest wins: its old frames were replaced
        # It took nothing for client_timeout_s: dropped, the other one stays.
        assert wait_until(lambda: server.stats().disconnected == 1, 5.0)
        assert len(server.stats().clients) == 1
    finally:
        steady.close()
        stuck.close()


def test_video_is_rate_capped_per_client_and_encoded_once_per_frame() -> None:
    server = IgtlServer("127.0.0.1", 0, image_max_rate_hz=10.0)
    server.start()
    builds: list[int] = []
    clients = [RawClient(server.port), RawClient(server.port)]
    try:
        assert _clients(server, 2)
        start = time.monotonic()
        for i in range(60):  # 100 frames/s for 0.6 s
            server.offer_image("endoscope", lambda v=i: (builds.append(v), _frame(v))[1])
            time.sleep(max(0.0, start + (i + 1) * 0.01 - time.monotonic()))
        for client in clients:
            assert client.wait_for(lambda m: len(m) >= 3)
            assert len(client.of_type("IMAGE")) <= 8  # 0.6 s at 10 Hz, plus slack
        assert len(builds) <= 8 and server.stats().images_encoded == len(builds)
    finally:
        for client in clients:
            client.close()
        server.close()


def test_connections_beyond_max_clients_are_closed_at_once() -> None:
    server = IgtlServer("127.0.0.1", 0, max_clients=1)
    server.start()
    first = RawClient(server.port)
    try:
        assert _clients(server, 1)
        second = RawClient(server.port)
        assert second.wait_closed()
        assert server.stats().refused == 1
        server.publish_transform("pointer", np.eye(4), time.time())
        assert first.wait_for(lambda m: len(m) == 1)
        second.close()
    finally:
        first.close()
        server.close()


def test_close_ends_every_connection(server) -> None:
    client = RawClient(server.port)
    assert _clients(server, 1)
    server.close()
    assert client.wait_closed()
    client.close()
