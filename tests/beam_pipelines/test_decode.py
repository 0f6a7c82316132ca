"""Decoding of odd image formats and dead letters, alone and in a TestPipeline."""
import io
import struct
import zlib
import os

import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import numpy as np
from PIL import Image
import pytest

from beam_pipelines import decode
from beam_pipelines import pseudo_label

H, W = 6, 10


def _rgb(seed=0):
  return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def odd_files() -> dict[str, bytes]:
  """One small file per odd case a corpus may hold, by file name."""
  rgb = Image.fromarray(_rgb())
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise on display
  gray16 = Image.fromarray((np.arange(H * W).reshape(H, W) * 1000).astype(np.uint16))
  rgba = Image.fromarray(np.dstack([_rgb(), np.full((H, W), 128, np.uint8)]), "RGBA")
  return {
      "rgb.jpg": _save(rgb, "JPEG", quality=95),
      "rgb.png": _save(rgb, "PNG"),
      "gray.png": _save(rgb.convert("L"), "PNG"),
      "palette.gif": _save(rgb.convert("P"), "GIF"),
      "rgba.png": _save(rgba, "PNG"),
      "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
      "gray16.png": _save(gray16, "PNG"),
      "image.bmp": _save(rgb, "BMP"),
      "image.webp": _save(rgb, "WEBP", lossless=True),
      "image.tiff": _save(rgb, "TIFF"),
      "rotated.jpg": _save(rgb, "JPEG", quality=95, exif=exif.tobytes()),
  }


def bad_files() -> dict[str, tuple[bytes, str]]:
  """Files that must go to the dead letters, with the reason expected."""
  good = _save(Image.fromarray(_rgb()), "JPEG")
  png = _save(Image.fromarray(_rgb()), "PNG")
  return {
      "empty.jpg": (b"", decode.EMPTY),
      "notes.txt": (b"not an image at all\n", decode.NOT_AN_IMAGE),
      "corrupt.jpg": (good[:20] + b"\x00garbage" * 20, decode.NOT_AN_IMAGE),
      "truncated.png": (png[: len(png) // 2], decode.TRUNCATED),
      "huge.png": (_save(Image.new("RGB", (200, 200)), "PNG"), decode.TOO_MANY_PIXELS),
  }


@pytest.mark.parametrize("name", sorted(odd_files()))
def test_odd_formats_become_rgb(name):
  image, encoded, fmt = decode.decode_image(odd_files()[name])
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  assert image.shape[:2] == ((W, H) if name == "rotated.jpg" else (H, W))
  # The stored bytes decode (in TensorFlow, as trainers do) to the same pixels.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  stored = tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
  # JPEG decoders may differ by a few levels (IDCT, chroma upsampling); PNG is exact.
  np.testing.assert_allclose(stored.astype(int), image.astype(int),
                             atol=10 if fmt == "jpeg" else 0)
  assert fmt in ("jpeg", "png")


def test_plain_files_are_stored_as_they_are():
  files = odd_files()
  for name in ("rgb.jpg", "rgb.png"):
    assert decode.decode_image(files[name])[1] == files[name]
  assert decode.decode_image(files["rotated.jpg"])[1] != files["rotated.jpg"]


def test_conversions():
  files = odd_files()
  gray16, _, _ = decode.decode_image(files["gray16.png"])
  expected = np.clip(np.rint((np.arange(H * W).reshape(H, W) * 1000) / 257), 0, 255)
  np.testing.assert_array_equal(gray16[..., 0], expected)
  rgba, _, _ = decode.decode_image(files["rgba.png"])
  # Half-transparent pixels are blended over white.
  np.testing.assert_allclose(rgba, (_rgb().astype(float) * 128 + 255 * 127) / 255, atol=1.01)
  rotated, _, _ = decode.decode_image(files["rotated.jpg"])
  plain, _, _ = decode.decode_image(files["rgb.jpg"])
  np.testing.assert_allclose(rotated.astype(int), np.rot90(plain, -1).astype(int))


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_bad_files_raise_their_reason(name):
  data, reason = bad_files()[name]
  with pytest.raises(ValueError) as raised:
    decode.decode_image(data, max_pixels=10_000)
  assert raised.value.args[0] == reason


def _options():
  return pipeline_options.PipelineOptions(["--runner=DirectRunner"])


def test_read_corpus_decodes_good_and_dead_letters_bad(tmp_path):
  for name, data in odd_files().items():
    (tmp_path / name).write_bytes(data)
  for name, (data, _) in bad_files().items():
    (tmp_path / name).write_bytes(data)
  good, bad = odd_files(), bad_files()
  with test_pipeline.TestPipeline(options=_options()) as p:
    read = p | pseudo_label.ReadCorpus(str(tmp_path / "*"), max_pixels=10_000)
    names = read["decoded"] | "Names" >> beam.Map(lambda d: os.path.basename(d.path))
    util.assert_that(names, util.equal_to(sorted(good)), label="GoodDecoded")
    letters = read["dead_letters"] | beam.Map(lambda d: (os.path.basename(d["path"]), d["reason"]))
    util.assert_that(letters, util.equal_to([(n, r) for n, (_, r) in bad.items()]),
                     label="BadDeadLettered")
    util.assert_that(read["count"], util.equal_to([len(good) + len(bad)]), label="Count")


def test_read_corpus_of_tfrecords_dead_letters_bad_shards_and_records(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from must import schema as schema_lib  # pylint: disable=g-import-not-at-top
  schema = schema_lib.Schema({"depth": {}})
  with tf.io.TFRecordWriter(str(tmp_path / "good.tfrecord")) as writer:
    for seed in range(2):
      writer.write(schema.encode(_rgb(seed), {}).SerializeToString(deterministic=True))
    writer.write(b"\xff\xfe not a tf.Example")
  (tmp_path / "corrupt.tfrecord").write_bytes(b"\x00\x01garbage" * 10)
  with test_pipeline.TestPipeline(options=_options()) as p:
    read = p | pseudo_label.ReadCorpus(str(tmp_path / "*.tfrecord"), pseudo_label.TFRECORD)
    shapes = read["decoded"] | "Shapes" >> beam.Map(lambda d: d.image.shape)
    util.assert_that(shapes, util.equal_to([(H, W, 3)] * 2), label="Decoded")
    letters = read["dead_letters"] | beam.Map(
        lambda d: (os.path.basename(d["path"]), d["reason"]))
    util.assert_that(letters, util.equal_to([("good.tfrecord", decode.BAD_EXAMPLE),
                                             ("corrupt.tfrecord", decode.BAD_EXAMPLE)]),
                     label="DeadLetters")
    util.assert_that(read["count"], util.equal_to([4]), label="Count")


def _png_header(width: int, height: int) -> bytes:
  """A PNG that claims width x height pixels and holds almost no data (a bomb's header)."""
  def chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_max_pixels_is_the_limit_that_applies_not_pillows():
  bomb = _png_header(20_000, 10_000)  # 200 M pixels: over twice Pillow's default limit
  with pytest.raises(ValueError) as refused:
    decode.decode_image(bomb, max_pixels=100_000_000)
  assert refused.value.args[0] == decode.TOO_MANY_PIXELS
  assert "100000000" in refused.value.args[1]
  with pytest.raises(ValueError) as refused:  # far over: Pillow's own check, the same reason
    decode.decode_image(_png_header(100_000, 100_000), max_pixels=100_000_000)
  assert refused.value.args[0] == decode.TOO_MANY_PIXELS
  with pytest.raises(ValueError) as allowed:  # within --max_pixels: decoding is attempted
    decode.decode_image(bomb, max_pixels=300_000_000)
  assert allowed.value.args[0] == decode.TRUNCATED
