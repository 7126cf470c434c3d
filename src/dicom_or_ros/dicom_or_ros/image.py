"""sensor_msgs/Image <-> ndarray, the message side of :mod:`dicom_or_core.model.pixels`.

Every node reads and fills image messages here (drivers publish, the recorder and the
bridge's snapshot read), so the encoding table, the channel counts and the row-step rule
are those of the one core table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.pixels import channels, frame_pixels


def image_to_array(image: Any, encoding: str | None = None, width: int | None = None,
                   height: int | None = None) -> np.ndarray:
    """A sensor_msgs/Image as a (rows, columns[, 3]) uint8 array in its own channel order.

    ``encoding`` / ``width`` / ``height``, when given, are what the stream's descriptor
    promised: a frame that differs is refused (DicomOrError "image"), since its Series'
    geometry is fixed.
    """
    if (encoding is not None and image.encoding != encoding) or \
            (width is not None and image.width != width) or \
            (height is not None and image.height != height):
        raise DicomOrError("image", "encoding and size must match the descriptor",
                           (image.encoding, image.width, image.height))
    return frame_pixels(image.encoding, image.width, image.height, image.step, image.data)


def fill_image(image: Any, pixels: np.ndarray, encoding: str) -> Any:
    """Fill ``image`` (a sensor_msgs/Image) with ``pixels`` in ``encoding``, unpadded, and
    return it; the header is the caller's."""
    n = channels(encoding)
    if pixels.dtype != np.uint8 or pixels.ndim != (2 if n == 1 else 3) or \
            (n > 1 and pixels.shape[2] != n):
        raise DicomOrError("image", f"pixels do not fit {encoding}",
                           (pixels.dtype.name, pixels.shape))
    image.height, image.width = int(pixels.shape[0]), int(pixels.shape[1])
    image.encoding = encoding
    image.is_bigendian = 0
    image.step = image.width * n
    # bytes assignment is the fast path (~1 ms at 1080p); an ndarray is copied element by
    # element (~0.8 s at 1080p).
    image.data = pixels.tobytes()
    return image
