"""Image message <-> numpy array conversion: the one place the project does it.

Dataset conversion, the ROS nodes and the simulator all go through these functions, so an
image looks the same to the policy in training and on the robot. Messages are duck-typed: an
rclpy `sensor_msgs.msg.Image` (``data`` as bytes / array.array) and a rosbags Image (``data`` as
a numpy uint8 array) both work, as does any object with the same field names.

There is deliberately no cv_bridge path: the dataset is decoded by these functions (rosbags gives no
rclpy messages to cv_bridge), so a robot whose nodes decoded with cv_bridge instead could see other
pixels than the policy was trained on (its passthrough of padded rows, big-endian 16-bit and
float images is its own), and no registry here has cv_bridge to test the two against each other.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an array (names topic, stamp and encoding)."""


@dataclass(frozen=True)
class _Encoding:
    dtype: str  # numpy dtype of one channel, native byte order
    channels: int


# sensor_msgs/image_encodings names this project understands.
ENCODINGS: dict[str, _Encoding] = {
    'rgb8': _Encoding('uint8', 3),
    'bgr8': _Encoding('uint8', 3),
    'rgba8': _Encoding('uint8', 4),
    'bgra8': _Encoding('uint8', 4),
    'mono8': _Encoding('uint8', 1),
    '8UC1': _Encoding('uint8', 1),
    '8UC3': _Encoding('uint8', 3),
    'mono16': _Encoding('uint16', 1),
    '16UC1': _Encoding('uint16', 1),
    '32FC1': _Encoding('float32', 1),
}


def stamp_text(msg: Any) -> str:
    """`sec.nanosec` of ``msg.header.stamp``, or '?' for messages without a header."""
    stamp = getattr(getattr(msg, 'header', None), 'stamp', None)
    if stamp is None:
        return '?'
    return f'{int(stamp.sec)}.{int(stamp.nanosec):09d}'


def _error(msg: Any, topic: str, encoding: str, problem: str) -> ImageDecodeError:
    return ImageDecodeError(
        f'image on topic {topic!r} at stamp {stamp_text(msg)} (encoding {encoding!r}): {problem}')


def _as_byte_array(data: Any) -> np.ndarray:
    """A flat uint8 view of whatever container the message uses, copying only for lists."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)
    except TypeError:  # a plain list of ints (rclpy accepts those on assignment)
        return np.asarray(data, dtype=np.uint8)


def check_image_fields(msg: Any, *, topic: str = '?') -> _Encoding:
    """What `decode_image` checks before touching a pixel, without touching one (constant time, so a
    subscriber can refuse a malformed frame on arrival): a known encoding, a non-empty size, and a
    `step` and data length that agree with it. Raises ImageDecodeError saying what is wrong."""
    encoding = str(msg.encoding)
    spec = ENCODINGS.get(encoding)
    if spec is None:
        raise _error(msg, topic, encoding, f'unknown encoding; supported: {", ".join(ENCODINGS)}')
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise _error(msg, topic, encoding, f'image is {width}x{height}: no pixels')
    itemsize = np.dtype(spec.dtype).itemsize
    row_bytes = width * spec.channels * itemsize
    if step < row_bytes:
        raise _error(msg, topic, encoding,
                     f'step {step} is smaller than width {width} x {spec.channels * itemsize} bytes per pixel')
    size = _byte_length(msg.data)
    if size != height * step:
        raise _error(msg, topic, encoding,
                     f'data has {size} bytes, expected height {height} x step {step} = {height * step}')
    return spec


def _byte_length(data: Any) -> int:
    if isinstance(data, np.ndarray):
        return int(data.nbytes)
    try:
        return memoryview(data).nbytes
    except TypeError:  # a plain list of ints
        return len(data)


def decode_image(msg: Any, *, topic: str = '?') -> np.ndarray:
    """Raw `sensor_msgs/Image` -> (H, W, C) array in the message's own channel order.

    uint8 for rgb8/bgr8/rgba8/bgra8/mono8, uint16 for mono16/16UC1, float32 for 32FC1; mono
    gives C=1. Row padding (``step`` > width * bytes per pixel) and ``is_bigendian`` are honoured,
    and the result is a fresh, writable, native-endian array.
    """
    spec = check_image_fields(msg, topic=topic)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * spec.channels * np.dtype(spec.dtype).itemsize
    raw = _as_byte_array(msg.data)
    rows = raw.reshape(height, step)[:, :row_bytes]
    wire_dtype = np.dtype(spec.dtype).newbyteorder('>' if msg.is_bigendian else '<')
    pixels = np.ascontiguousarray(rows).view(wire_dtype).reshape(height, width, spec.channels)
    return pixels.astype(spec.dtype, copy=True)  # native byte order, writable


def to_rgb8(image: np.ndarray, encoding: str, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """An array from `decode_image` -> (H, W, 3) uint8 RGB, the policy's only image format.

    bgr is swapped, alpha dropped, mono repeated to 3 channels. 16-bit and float images are
    scaled linearly from ``value_range`` to 0..255 (default: the full uint16 range, and 0..1
    for float), clipping outside it. A float image with NaN or infinite pixels is refused: what such
    a pixel should look like to the policy is not known, so the frame cannot be trusted.
    """
    if encoding not in ENCODINGS:
        raise ImageDecodeError(f'to_rgb8: unknown encoding {encoding!r}')
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8:
        if image.dtype.kind == 'f':
            bad = int(np.count_nonzero(~np.isfinite(image)))
            if bad:
                raise ImageDecodeError(f'{bad} non-finite pixel(s) in a {encoding} image')
        low, high = value_range if value_range is not None else (
            (0.0, 65535.0) if image.dtype == np.uint16 else (0.0, 1.0))
        scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
        image = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if encoding.startswith('bgr'):
        return np.ascontiguousarray(image[:, :, 2::-1])
    return np.ascontiguousarray(image[:, :, :3])


def decode_compressed(msg: Any, *, topic: str = '?') -> np.ndarray:
    """`sensor_msgs/CompressedImage` (jpeg or png) -> (H, W, 3) uint8 RGB.

    The codec writes true colours into the file whatever the source encoding, so no channel
    swap is needed. 16-bit png (depth) is scaled like `to_rgb8`. `compressedDepth` (a custom
    header before the png) is not supported and is reported as such.
    """
    fmt = str(getattr(msg, 'format', ''))
    if 'compresseddepth' in fmt.lower():
        raise _error(msg, topic, fmt, 'compressedDepth images are not supported')
    try:
        with PILImage.open(io.BytesIO(_as_byte_array(msg.data).tobytes())) as pil:
            if pil.format not in ('JPEG', 'PNG'):
                raise _error(msg, topic, fmt, f'expected jpeg or png data, found {pil.format}')
            if pil.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
                return to_rgb8(np.asarray(pil).astype(np.uint16), 'mono16')
            return np.asarray(pil.convert('RGB')).copy()
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises several types for bad data
        raise _error(msg, topic, fmt, f'cannot decode compressed data: {exc}') from exc


# CDR encapsulation identifiers (first two bytes of a serialized message): plain and XCDR2, big/little.
_LITTLE_ENDIAN_CDR = {b'\x00\x01', b'\x00\x07', b'\x00\x09', b'\x00\x0b'}
_BIG_ENDIAN_CDR = {b'\x00\x00', b'\x00\x06', b'\x00\x08', b'\x00\x0a'}


def cdr_header_stamp(raw: bytes, *, topic: str = '?') -> float:
    """`header.stamp` (seconds) of a serialized message whose first field is a std_msgs/Header (Image,
    CompressedImage, ...), read without deserializing it: after the 4-byte encapsulation header come
    stamp.sec (int32) and stamp.nanosec (uint32). Taking a raw frame out of DDS and reading its stamp
    costs a copy; reading the rest waits until a window uses the frame (`image_from_cdr`)."""
    head = bytes(raw[:12])
    if len(head) < 12 or head[:2] not in _LITTLE_ENDIAN_CDR | _BIG_ENDIAN_CDR:
        raise ImageDecodeError(f'frame on topic {topic!r} is not a CDR-serialized message with a header '
                               f'({len(raw)} bytes, starting {head[:4].hex()})')
    order = '<' if head[:2] in _LITTLE_ENDIAN_CDR else '>'
    sec, nanosec = np.frombuffer(head, dtype=np.dtype([('sec', order + 'i4'), ('nanosec', order + 'u4')]),
                                 count=1, offset=4)[0]
    return float(sec) + float(nanosec) * 1e-9


@dataclass(frozen=True)
class CdrImage:
    """The fields of a serialized sensor_msgs/Image that decoding needs; `data` is a view into the bytes."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray


def image_from_cdr(raw: bytes, *, topic: str = '?') -> CdrImage:
    """A CDR-serialized sensor_msgs/Image read in place: the pixel data stays a view into `raw`.

    Hand-written on purpose: rosbags' deserializer (the dataset's, used as the oracle in the tests)
    copies the pixel data while holding the GIL, 30 ms for a 4000x3000 frame, during which the policy
    node's control tick cannot run. Image's fields are at most 4-byte aligned, so plain CDR and XCDR2
    lay it out alike: uint32 lengths before strings (with their NUL) and the data, aligned from the
    end of the 4-byte encapsulation header.
    """
    buffer = memoryview(raw)
    head = bytes(buffer[:2])
    if head not in _LITTLE_ENDIAN_CDR | _BIG_ENDIAN_CDR:
        raise ImageDecodeError(f'frame on topic {topic!r}: unknown CDR encapsulation {head.hex()}')
    order = '<' if head in _LITTLE_ENDIAN_CDR else '>'
    offset = 4 + 8  # encapsulation, stamp

    def uint32() -> int:
        nonlocal offset
        offset = 4 + -(-(offset - 4) // 4) * 4  # align to 4 from the end of the encapsulation
        if offset + 4 > len(buffer):
            raise ImageDecodeError(f'frame on topic {topic!r} is truncated ({len(buffer)} bytes)')
        value = int(np.frombuffer(buffer, dtype=order + 'u4', count=1, offset=offset)[0])
        offset += 4
        return value

    def string() -> str:
        nonlocal offset
        size = uint32()
        if offset + size > len(buffer):
            raise ImageDecodeError(f'frame on topic {topic!r} is truncated ({len(buffer)} bytes)')
        text = bytes(buffer[offset:offset + size]).rstrip(b'\x00').decode('utf-8', errors='replace')
        offset += size
        return text

    string()  # header.frame_id
    height, width = uint32(), uint32()
    encoding = string()
    if offset + 1 > len(buffer):
        raise ImageDecodeError(f'frame on topic {topic!r} is truncated ({len(buffer)} bytes)')
    is_bigendian = int(buffer[offset])
    offset += 1
    step = uint32()
    size = uint32()
    if offset + size > len(buffer):
        raise ImageDecodeError(f'frame on topic {topic!r}: data of {size} bytes is cut off at {len(buffer) - offset}')
    return CdrImage(height, width, encoding, is_bigendian, step,
                    np.frombuffer(buffer, dtype=np.uint8, count=size, offset=offset))


def message_to_rgb8(msg: Any, *, topic: str = '?') -> np.ndarray:
    """Image or CompressedImage message -> (H, W, 3) uint8 RGB (dispatch on the fields present)."""
    if hasattr(msg, 'encoding'):
        image = decode_image(msg, topic=topic)
        try:
            return to_rgb8(image, str(msg.encoding))
        except ImageDecodeError as err:
            raise _error(msg, topic, str(msg.encoding), str(err)) from None
    return decode_compressed(msg, topic=topic)


def prepare_model_image(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an RGB frame to the model's input size, identically in training and deployment.

    PIL's bilinear filter widens its support when downscaling (it averages every source pixel,
    like area resampling), so small features do not alias away; 640x480 -> 96x96 takes about a
    millisecond. The aspect ratio is not kept: the model sees the whole field of view.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'prepare_model_image expects (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}')
    height, width = int(size_hw[0]), int(size_hw[1])
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    resized = PILImage.fromarray(np.ascontiguousarray(rgb)).resize(
        (width, height), resample=PILImage.Resampling.BILINEAR)
    return np.asarray(resized)


def encode_rgb8(rgb: np.ndarray) -> dict[str, Any]:
    """(H, W, 3) uint8 RGB -> the fields of a `sensor_msgs/Image` (data as bytes), for either world."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'encode_rgb8 expects (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}')
    height, width = rgb.shape[:2]
    return {'height': int(height), 'width': int(width), 'encoding': 'rgb8', 'is_bigendian': 0,
            'step': int(width) * 3, 'data': np.ascontiguousarray(rgb).tobytes()}
