"""Image codec: every supported encoding, row padding, byte order, and errors that say where."""
import io
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from diffusion_policy_ros.data.image_codec import (
    ENCODINGS, ImageDecodeError, decode_compressed, decode_image, encode_rgb8, message_to_rgb8,
    prepare_model_image, to_rgb8)

RNG = np.random.default_rng(0)


def make_msg(pixels: np.ndarray, encoding: str, *, pad: int = 0, bigendian: bool = False,
             container=bytes, stamp=(12, 345)) -> SimpleNamespace:
    """A duck-typed Image whose rows are ``pad`` bytes longer than the pixels (filled with 0xAB)."""
    height, width = pixels.shape[:2]
    wire = pixels.astype(pixels.dtype.newbyteorder('>' if bigendian else '<'))
    rows = np.ascontiguousarray(wire).view(np.uint8).reshape(height, -1)
    rows = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    data = rows.tobytes() if container is bytes else container(rows.reshape(-1))
    header = SimpleNamespace(stamp=SimpleNamespace(sec=stamp[0], nanosec=stamp[1]), frame_id='cam')
    return SimpleNamespace(header=header, height=height, width=width, encoding=encoding,
                           is_bigendian=int(bigendian), step=rows.shape[1], data=data)


CASES = [
    ('rgb8', np.uint8, 3), ('bgr8', np.uint8, 3), ('rgba8', np.uint8, 4), ('bgra8', np.uint8, 4),
    ('mono8', np.uint8, 1), ('mono16', np.uint16, 1), ('16UC1', np.uint16, 1), ('32FC1', np.float32, 1),
]


@pytest.mark.parametrize('encoding,dtype,channels', CASES)
@pytest.mark.parametrize('pad', [0, 6])
@pytest.mark.parametrize('bigendian', [False, True])
def test_decode_every_encoding_with_padding_and_byte_order(encoding, dtype, channels, pad, bigendian):
    if np.dtype(dtype).kind == 'f':
        pixels = RNG.normal(size=(3, 5, channels)).astype(dtype)
    else:
        pixels = RNG.integers(0, np.iinfo(dtype).max, size=(3, 5, channels), endpoint=True).astype(dtype)
    decoded = decode_image(make_msg(pixels, encoding, pad=pad, bigendian=bigendian), topic='/cam')
    assert decoded.dtype == np.dtype(dtype) and decoded.dtype.isnative
    assert decoded.shape == (3, 5, channels)
    np.testing.assert_array_equal(decoded, pixels)
    decoded[0, 0, 0] = 0  # writable: callers may modify in place


@pytest.mark.parametrize('container', [bytes, np.asarray, lambda a: __import__('array').array('B', a.tobytes())])
def test_decode_accepts_bytes_numpy_and_array_array_data(container):
    pixels = RNG.integers(0, 255, size=(4, 2, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(make_msg(pixels, 'rgb8', container=container)), pixels)


def test_bigendian_mono16_really_swaps_bytes():
    pixels = np.array([[[0x0102], [0xFF00]]], dtype=np.uint16)
    msg = make_msg(pixels, 'mono16', bigendian=True)
    assert bytes(msg.data[:2]) == b'\x01\x02'
    assert decode_image(msg).reshape(-1).tolist() == [0x0102, 0xFF00]


def test_rclpy_image_message_roundtrip():
    from sensor_msgs.msg import Image
    rgb = RNG.integers(0, 255, size=(6, 7, 3), dtype=np.uint8)
    msg = Image(**encode_rgb8(rgb))
    np.testing.assert_array_equal(decode_image(msg), rgb)
    np.testing.assert_array_equal(message_to_rgb8(msg), rgb)


def test_to_rgb8_channel_order_alpha_mono_and_scaling():
    rgb = RNG.integers(0, 255, size=(2, 3, 3), dtype=np.uint8)
    bgr = rgb[:, :, ::-1]
    np.testing.assert_array_equal(to_rgb8(bgr, 'bgr8'), rgb)
    np.testing.assert_array_equal(to_rgb8(np.concatenate([bgr, np.full((2, 3, 1), 9, np.uint8)], 2), 'bgra8'), rgb)
    np.testing.assert_array_equal(to_rgb8(np.concatenate([rgb, np.zeros((2, 3, 1), np.uint8)], 2), 'rgba8'), rgb)
    mono = rgb[:, :, :1]
    np.testing.assert_array_equal(to_rgb8(mono, 'mono8'), np.repeat(mono, 3, axis=2))
    deep = np.array([[[0], [257 * 100], [65535]]], dtype=np.uint16)
    assert to_rgb8(deep, 'mono16')[0, :, 0].tolist() == [0, 100, 255]
    assert to_rgb8(deep, '16UC1', value_range=(0, 257 * 100))[0, :, 1].tolist() == [0, 255, 255]
    depth = np.array([[[0.0], [0.5], [2.0]]], dtype=np.float32)
    assert to_rgb8(depth, '32FC1')[0, :, 2].tolist() == [0, 128, 255]


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_a_float_image_with_non_finite_pixels_is_refused_with_its_topic(bad):
    depth = np.array([[[0.0], [0.5], [bad]]], dtype=np.float32)
    with pytest.raises(ImageDecodeError, match='non-finite'):
        to_rgb8(depth, '32FC1')
    msg = make_msg(depth, '32FC1')
    with pytest.raises(ImageDecodeError, match=r"'/depth'.*1 non-finite"):
        message_to_rgb8(msg, topic='/depth')


def test_wrong_data_length_names_topic_stamp_and_encoding():
    msg = make_msg(RNG.integers(0, 255, size=(4, 4, 3), dtype=np.uint8), 'bgr8')
    msg.data = msg.data[:-3]
    with pytest.raises(ImageDecodeError) as err:
        decode_image(msg, topic='/camera/color/image_raw')
    text = str(err.value)
    assert '/camera/color/image_raw' in text and '12.000000345' in text and 'bgr8' in text
    assert '45 bytes' in text and '48' in text


def test_step_smaller_than_row_is_an_error():
    msg = make_msg(np.zeros((2, 4, 1), np.uint16), 'mono16')
    msg.step, msg.data = 6, bytes(12)
    with pytest.raises(ImageDecodeError, match=r"step 6 is smaller.*width 4"):
        decode_image(msg, topic='/depth')


def test_unknown_encoding_names_topic_stamp_and_encoding():
    msg = make_msg(np.zeros((2, 2, 2), np.uint8), 'yuv422')
    with pytest.raises(ImageDecodeError) as err:
        decode_image(msg, topic='/cam_left')
    assert all(part in str(err.value) for part in ('/cam_left', '12.000000345', 'yuv422', 'unknown encoding'))
    assert isinstance(err.value, ValueError)


def _compressed(rgb: np.ndarray, fmt: str) -> SimpleNamespace:
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format=fmt)
    header = SimpleNamespace(stamp=SimpleNamespace(sec=5, nanosec=7))
    return SimpleNamespace(header=header, format=f'bgr8; {fmt.lower()} compressed bgr8',
                           data=np.frombuffer(buffer.getvalue(), np.uint8))


def test_compressed_png_is_lossless_and_jpeg_close():
    rgb = RNG.integers(0, 255, size=(16, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_compressed(_compressed(rgb, 'PNG')), rgb)
    smooth = np.zeros((16, 24, 3), np.uint8)
    smooth[..., 0], smooth[..., 2] = 200, 40  # a red-ish frame: a channel swap would show
    decoded = message_to_rgb8(_compressed(smooth, 'JPEG'))
    assert decoded.shape == (16, 24, 3) and np.abs(decoded.astype(int) - smooth).max() <= 4


def test_compressed_garbage_names_topic_and_stamp():
    msg = _compressed(np.zeros((4, 4, 3), np.uint8), 'PNG')
    msg.data = msg.data[:20]
    with pytest.raises(ImageDecodeError, match=r"'/wrist'.*5\.000000007.*png"):
        decode_compressed(msg, topic='/wrist')


def test_prepare_model_image_shape_determinism_and_averaging():
    frame = RNG.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    small = prepare_model_image(frame, (96, 96))
    assert small.shape == (96, 96, 3) and small.dtype == np.uint8
    np.testing.assert_array_equal(small, prepare_model_image(frame.copy(), (96, 96)))
    # downscaling averages: a fine checkerboard becomes mid-grey, not aliased stripes
    checker = ((np.indices((480, 640)).sum(0) % 2) * 255).astype(np.uint8)
    grey = prepare_model_image(np.repeat(checker[..., None], 3, 2), (96, 96)).astype(int)
    assert np.abs(grey[4:-4, 4:-4] - 127).max() <= 10
    np.testing.assert_array_equal(prepare_model_image(small, (96, 96)), small)
    with pytest.raises(ValueError, match='uint8'):
        prepare_model_image(frame.astype(np.float32), (96, 96))


def test_encode_rgb8_fields():
    rgb = RNG.integers(0, 255, size=(3, 4, 3), dtype=np.uint8)
    fields = encode_rgb8(rgb)
    assert (fields['height'], fields['width'], fields['encoding'], fields['step'], fields['is_bigendian']) == (
        3, 4, 'rgb8', 12, 0)
    assert fields['data'] == rgb.tobytes()


# ---------------------------------------------------------------------- serialized frames (policy_node's path)

@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 12), width=st.integers(1, 12), pad=st.integers(0, 5),
       encoding=st.sampled_from(['rgb8', 'bgr8', 'rgba8', 'mono8', 'mono16', '32FC1']),
       frame_id=st.text(max_size=9), little_endian=st.booleans(), sec=st.integers(0, 2**31 - 1),
       nanosec=st.integers(0, 999_999_999))
@example(height=5, width=5, pad=0, encoding='32FC1', frame_id='', little_endian=False, sec=0, nanosec=0)  # has NaN
def test_a_serialized_image_reads_in_place_like_the_datasets_deserializer(height, width, pad, encoding, frame_id,
                                                                          little_endian, sec, nanosec):
    """image_from_cdr (a view, no copy) against rosbags (the dataset's deserializer) on the same bytes,
    both CDR byte orders: the fields, the decoded pixels and the header stamp agree."""
    from diffusion_policy_ros.data.bags import TYPESTORE
    from diffusion_policy_ros.data.image_codec import cdr_header_stamp, image_from_cdr
    Image = TYPESTORE.types['sensor_msgs/msg/Image']
    Header = TYPESTORE.types['std_msgs/msg/Header']
    Time = TYPESTORE.types['builtin_interfaces/msg/Time']
    channels, itemsize = {'rgb8': (3, 1), 'bgr8': (3, 1), 'rgba8': (4, 1), 'mono8': (1, 1), 'mono16': (1, 2),
                          '32FC1': (1, 4)}[encoding]
    step = width * channels * itemsize + pad
    data = np.random.default_rng(height * 31 + width).integers(0, 255, height * step, dtype=np.uint8)
    msg = Image(header=Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id), height=height,
                width=width, encoding=encoding, is_bigendian=0, step=step, data=data)
    raw = bytes(TYPESTORE.serialize_cdr(msg, 'sensor_msgs/msg/Image', little_endian=little_endian))
    ours = image_from_cdr(raw)
    oracle = TYPESTORE.deserialize_cdr(raw, 'sensor_msgs/msg/Image')
    assert (ours.height, ours.width, ours.encoding, ours.is_bigendian, ours.step) == \
        (oracle.height, oracle.width, oracle.encoding, oracle.is_bigendian, oracle.step)
    np.testing.assert_array_equal(ours.data, oracle.data)
    try:
        expected = message_to_rgb8(oracle)
    except ImageDecodeError as err:  # random 32FC1 bytes can spell NaN or inf: both paths refuse them
        with pytest.raises(ImageDecodeError, match='non-finite'):
            message_to_rgb8(ours)
        assert 'non-finite' in str(err)
    else:
        np.testing.assert_array_equal(message_to_rgb8(ours), expected)
    assert cdr_header_stamp(raw) == pytest.approx(sec + nanosec * 1e-9, abs=1e-9)


@pytest.mark.parametrize('cut', [3, 11, 30, -1])
def test_a_truncated_or_foreign_serialized_frame_is_refused_with_the_topic(cut):
    from diffusion_policy_ros.data.bags import TYPESTORE
    from diffusion_policy_ros.data.image_codec import cdr_header_stamp, image_from_cdr
    Image = TYPESTORE.types['sensor_msgs/msg/Image']
    Header = TYPESTORE.types['std_msgs/msg/Header']
    Time = TYPESTORE.types['builtin_interfaces/msg/Time']
    msg = Image(header=Header(stamp=Time(sec=1, nanosec=2), frame_id='cam'), height=2, width=2, encoding='rgb8',
                is_bigendian=0, step=6, data=np.zeros(12, np.uint8))
    raw = bytes(TYPESTORE.serialize_cdr(msg, 'sensor_msgs/msg/Image'))[:cut]
    with pytest.raises(ImageDecodeError, match="'/cam'"):
        image_from_cdr(raw, topic='/cam')
    if len(raw) < 12:  # the stamp itself is cut
        with pytest.raises(ImageDecodeError, match="'/cam'"):
            cdr_header_stamp(raw, topic='/cam')
    else:
        assert cdr_header_stamp(raw) == pytest.approx(1.000000002)
    with pytest.raises(ImageDecodeError, match='CDR'):
        cdr_header_stamp(b'\xff\xff' + raw[2:], topic='/cam')


@settings(max_examples=200, deadline=None)
@given(height=st.integers(-2, 6), width=st.integers(-2, 6), step=st.integers(-4, 40),
       encoding=st.sampled_from([*ENCODINGS, 'yuv422', '', 'rgb16']), length=st.integers(0, 200),
       fill=st.sampled_from([0.0, 1.0, float('nan'), float('inf'), 1e30]), bigendian=st.booleans())
def test_any_image_message_decodes_to_rgb8_or_is_refused_with_an_image_error(height, width, step, encoding,
                                                                              length, fill, bigendian):
    """Arbitrary sizes, steps, data lengths, encodings and float contents: an (H, W, 3) uint8 image, or
    ImageDecodeError (what the nodes turn into a HOLD), never anything else."""
    data = np.full(length // 4, fill, dtype=np.float32).tobytes() + bytes(length % 4)
    msg = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=2)), height=height,
                          width=width, step=step, encoding=encoding, is_bigendian=int(bigendian), data=data)
    try:
        rgb = message_to_rgb8(msg, topic='/any')
    except ImageDecodeError as err:
        assert '/any' in str(err)
        return
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3) and height > 0 and width > 0


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=96), head=st.sampled_from([b'\x00\x01\x00\x00', b'\x00\x00\x00\x00', b'']))
def test_any_bytes_read_as_a_serialized_frame_or_are_refused(raw, head):
    from diffusion_policy_ros.data.image_codec import cdr_header_stamp, check_image_fields, image_from_cdr
    data = head + raw
    for read in (lambda: cdr_header_stamp(data), lambda: check_image_fields(image_from_cdr(data))):
        try:
            read()
        except ImageDecodeError:
            pass
