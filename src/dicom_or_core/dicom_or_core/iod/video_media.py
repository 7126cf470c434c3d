"""A recorded video instance as a browser plays it: ``video/mp4`` remuxed, never re-encoded.

The Pixel Data of a Video Endoscopic / Photographic instance (PS3.5 8.2.5-8.2.8) is one
MPEG-2 Transport Stream, encapsulated (PS3.5 A.4) in fragments. PS3.18 8.7.4 (Rendered
Media Types) lists ``video/mp4`` for multi-frame video; browsers play MP4 (H.264), not
MPEG-TS. So the rendered MP4 is the same coded pictures in another container:

1. :func:`extract_stream` copies the fragments from the DICOM file to a ``.ts`` file, piece
   by piece (the instance is never whole in memory);
2. :func:`remux_mp4` copies the packets, with their own PTS/DTS, into an MP4 with its
   ``moov`` box first (``movflags=faststart``), so a browser starts playing before the
   last byte arrives.

The coded bit stream is bit for bit the stored one: no decoder, no encoder, no quality loss.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import av
from pydicom import dcmread
from pydicom.uid import MPEGTransferSyntaxes

from dicom_or_core.model.errors import DicomOrError

# Transfer Syntaxes whose Pixel Data is one video stream (PS3.5 8.2.5-8.2.8, 10.13-10.15):
# MPEG-2, MPEG-4 AVC / H.264 and HEVC / H.265, fragmentable or not.
VIDEO_TRANSFER_SYNTAXES = frozenset(str(uid) for uid in MPEGTransferSyntaxes)
MEDIA_MP4 = "video/mp4"
_PIXEL_DATA = (0x7FE0, 0x0010)
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_ELEMENT = struct.Struct("<HH2sHI")   # Explicit VR OB header (PS3.5 7.1.2)
_ITEM_HEADER = struct.Struct("<HHI")  # PS3.5 A.4
_CHUNK = 1 << 20


def is_video(path: Path) -> bool:
    """Whether the archived file's Transfer Syntax carries a video stream."""
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).file_meta
    return str(meta.TransferSyntaxUID) in VIDEO_TRANSFER_SYNTAXES


def _copy(source: BinaryIO, target: BinaryIO, size: int) -> None:
    while size > 0:
        chunk = source.read(min(_CHUNK, size))
        if not chunk:
            raise DicomOrError("PixelData", "fragment ends before its declared length")
        target.write(chunk)
        size -= len(chunk)


def extract_stream(path: Path, target: BinaryIO) -> int:
    """Copy the encapsulated video stream of the DICOM file at ``path`` (fragments after the
    Basic Offset Table, PS3.5 A.4) to ``target``; the number of bytes copied.

    DicomOrError when the file holds no encapsulated Pixel Data of a video Transfer Syntax.
    """
    with open(path, "rb") as fp:
        ds = dcmread(fp, stop_before_pixels=True)
        if str(ds.file_meta.TransferSyntaxUID) not in VIDEO_TRANSFER_SYNTAXES:
            raise DicomOrError("TransferSyntaxUID", "not a video transfer syntax",
                               str(ds.file_meta.TransferSyntaxUID))
        group, element, _vr, _reserved, length = _ELEMENT.unpack(fp.read(_ELEMENT.size))
        if (group, element) != _PIXEL_DATA or length != 0xFFFFFFFF:
            raise DicomOrError("PixelData", "no encapsulated Pixel Data")
        copied, first = 0, True
        while header := fp.read(_ITEM_HEADER.size):
            group, element, size = _ITEM_HEADER.unpack(header)
            if (group, element) == _SEQUENCE_DELIMITER:
                return copied
            if (group, element) != _ITEM:
                raise DicomOrError("PixelData", "malformed fragment item")
            if first:           # the Basic Offset Table (empty for video, PS3.5 8.2.7)
                fp.seek(size, 1)
                first = False
                continue
            _copy(fp, target, size)
            copied += size
    raise DicomOrError("PixelData", "no Sequence Delimitation Item")


def remux_mp4(source: Path, target: Path) -> int:
    """Remux the video stream of the Transport Stream ``source`` into an MP4 at ``target``
    (``moov`` first), packets copied with their timestamps; the number of packets."""
    packets = 0
    with av.open(str(source), "r", format="mpegts") as inp:
        if not inp.streams.video:
            raise DicomOrError("PixelData", "the stored stream has no video")
        video = inp.streams.video[0]
        with av.open(str(target), "w", format="mp4",
                     options={"movflags": "+faststart"}) as out:
            stream = out.add_stream_from_template(video)
            for packet in inp.demux(video):
                if packet.dts is None:   # the demuxer's flush packet
                    continue
                packet.stream = stream
                out.mux(packet)
                packets += 1
    return packets


def render_mp4(path: Path, workdir: Path) -> Path:
    """The archived video instance at ``path`` as ``workdir/<name>.mp4`` (through a
    ``.ts`` beside it, removed after); DicomOrError when it is not a playable video."""
    ts, mp4 = workdir / f"{path.stem}.ts", workdir / f"{path.stem}.mp4"
    try:
        with open(ts, "wb") as out:
            extract_stream(path, out)
        try:
            if remux_mp4(ts, mp4) == 0:
                raise DicomOrError("PixelData", "the stored stream holds no picture")
        except av.FFmpegError as exc:
            raise DicomOrError("PixelData", f"cannot remux the stored stream: {exc}") from None
    finally:
        ts.unlink(missing_ok=True)
    return mp4
