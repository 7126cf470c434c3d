"""The one pixel-encoding table of the project (ROS-free).

A frame travels as a sensor_msgs/Image-style buffer: an encoding name from ROS's
``sensor_msgs/image_encodings.hpp`` (``rgb8``, ``bgr8``, ``mono8``: 8 bits per sample,
interleaved), width, height and a row ``step`` in bytes that may exceed width x channels
(row padding). Every module that turns such a buffer into an array, or checks an encoding,
reads :data:`CHANNELS`: the drivers, the recorder, the bridge's snapshot, the simulators.
"""

from __future__ import annotations

import numpy as np

from dicom_or_core.model.errors import DicomOrError

# Samples per pixel of each supported encoding (image_encodings.hpp names, uint8 samples).
CHANNELS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "mono8": 1}
PIXEL_ENCODINGS: tuple[str, ...] = tuple(CHANNELS)


def channels(encoding: str, field: str = "pixel_encoding") -> int:
    """Samples per pixel of ``encoding``; an unsupported one is an error naming ``field``."""
    try:
        return CHANNELS[encoding]
    except KeyError:
        raise DicomOrError(field, f"must be one of {', '.join(CHANNELS)}", encoding) from None


def frame_shape(encoding: str, rows: int, columns: int) -> tuple[int, ...]:
    """The array shape of one frame: (rows, columns) for mono, (rows, columns, 3) else."""
    n = channels(encoding)
    return (rows, columns) if n == 1 else (rows, columns, n)


def frame_pixels(encoding: str, width: int, height: int, step: int,
                 data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """An image buffer as a (rows, columns[, 3]) uint8 array in the image's own channel
    order; a row ``step`` larger than width * channels (padding) is honoured, the padding
    dropped. Sizes that do not match the data are an error, never a reshape exception."""
    n = channels(encoding, "image.encoding")
    row_bytes = width * n
    size = data.size if isinstance(data, np.ndarray) else len(data)
    if width <= 0 or height <= 0 or step < row_bytes or size < step * height:
        raise DicomOrError("image", "width/height/step do not match the data",
                           (width, height, step, size))
    rows = np.frombuffer(data, np.uint8, count=step * height).reshape(height, step)
    return np.ascontiguousarray(rows[:, :row_bytes]).reshape(frame_shape(encoding, height,
                                                                         width))
