"""Per-element image decoding for the pseudo-labeling pipeline, with dead letters.

Every input (an image file, or a tf.Example from a TFRecord shard) becomes one
`Decoded` element: RGB uint8 pixels, the bytes to store, a stable id and its
path; or one dead letter {path, reason, detail} on the `dead_letters` output.
Nothing here raises out of the DoFn: one bad file never fails a bundle.

Pillow decodes JPEG, PNG, GIF, BMP, WebP and TIFF. EXIF orientation is applied
to image files (not to tf.Examples, whose labels are aligned with the pixels
as TensorFlow decodes them, without EXIF); grayscale, palette, RGBA, CMYK and
16-bit images become 8-bit RGB. The original file bytes are stored when they
already decode to exactly these pixels in TensorFlow (8-bit RGB JPEG or PNG,
no rotation); otherwise the pixels are stored as a lossless PNG.
"""
import dataclasses
import io
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
from PIL import Image
from PIL import ImageOps
import tensorflow as tf

from must import image_codec
from must import schema as schema_lib

DEAD_LETTERS = "dead_letters"
# Dead-letter reasons.
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated_or_corrupt"
TOO_MANY_PIXELS = "too_many_pixels"
UNREADABLE = "unreadable"
BAD_EXAMPLE = "bad_example"
_REASONS = (EMPTY, NOT_AN_IMAGE, TRUNCATED, TOO_MANY_PIXELS, UNREADABLE, BAD_EXAMPLE)
FILTERS = (TOO_MANY_PIXELS,)  # reasons that are deliberate (a limit the run set), not failures
DEFAULT_MAX_PIXELS = 50_000_000
_ORIENTATION = 0x0112  # the EXIF orientation tag

_STORED_AS_IS = {"JPEG": image_codec.JPEG, "PNG": image_codec.PNG}


@dataclasses.dataclass
class Decoded:
  """One decoded input image.

  Attributes:
    id: stable id, `must.image_codec.content_id` of the file bytes (or the
      input example's `image/source_id`).
    path: where it came from (file path; for TFRecords `shard#id`).
    image: uint8 [H, W, 3] RGB pixels; labels are made in these coordinates.
    encoded: the bytes stored as `image/encoded` (decode to `image`).
    image_format: 'jpeg' or 'png', the format of `encoded`.
    example: the input tf.Example's features (TFRecord input), else None;
      ground-truth labels are copied from it.
  """
  id: str
  path: str
  image: np.ndarray
  encoded: bytes
  image_format: str
  example: Any = None

  @property
  def image_size(self) -> tuple[int, int]:
    return tuple(self.image.shape[:2])


def dead_letter(path: str, reason: str, detail: str = "") -> dict[str, str]:
  """The dead-letter record of one input."""
  return {"path": path, "reason": reason, "detail": detail[:500]}


def _to_rgb(image: Image.Image) -> np.ndarray:
  """Any Pillow mode -> uint8 [H, W, 3] RGB."""
  mode = image.mode
  if mode.startswith("I") or mode == "F":
    array = np.asarray(image).astype(np.float64)
    if mode.startswith("I;16") or (mode == "I" and array.max(initial=0) > 255):
      array = array / 257.0  # 16-bit range to 8-bit.
    gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  elif mode in ("LA", "La", "PA"):
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "RGBa"):
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, image.convert("RGBA"))
  return np.asarray(image.convert("RGB"), np.uint8)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                 apply_exif: bool = True) -> tuple[np.ndarray, bytes, str]:
  """Decodes image file bytes to RGB and picks the bytes to store.

  Args:
    data: the file bytes.
    max_pixels: images with more pixels are refused (checked before decoding).
    apply_exif: rotate/flip by the EXIF orientation tag.

  Returns:
    (uint8 [H, W, 3] RGB, stored bytes, stored format 'jpeg' | 'png').

  Raises:
    ValueError: with a dead-letter reason as its first argument and a detail
      as its second.
  """
  if not data:
    raise ValueError(EMPTY, "the file is empty")
  # Pillow's own bomb limit (an error above twice it) follows max_pixels, so
  # that max_pixels, checked on the header below, is the limit that applies.
  Image.MAX_IMAGE_PIXELS = max_pixels
  try:
    image = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise ValueError(TOO_MANY_PIXELS, f"{e} (max_pixels {max_pixels})") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(NOT_AN_IMAGE, f"{type(e).__name__}: {e}") from None
  width, height = image.size
  if width * height > max_pixels:
    raise ValueError(TOO_MANY_PIXELS, f"{width}x{height} = {width * height} pixels > "
                     f"max_pixels {max_pixels}")
  if width < 1 or height < 1:
    raise ValueError(NOT_AN_IMAGE, f"{width}x{height} image")
  try:
    image.load()
    source_format, source_mode = image.format, image.mode
    rotated = apply_exif and image.getexif().get(_ORIENTATION, 1) not in (0, 1)
    rgb = _to_rgb(ImageOps.exif_transpose(image) if rotated else image)
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
    raise ValueError(TRUNCATED, f"{type(e).__name__}: {e}") from None
  if source_format in _STORED_AS_IS and source_mode == "RGB" and not rotated:
    return rgb, data, _STORED_AS_IS[source_format]
  return rgb, image_codec.encode_png(rgb), image_codec.PNG


def _failure(path: str, error: Exception) -> dict[str, str]:
  """The dead letter of a decoding error: its reason when `decode_image` gave one."""
  if isinstance(error, ValueError) and len(error.args) == 2 and error.args[0] in _REASONS:
    return dead_letter(path, *error.args)
  return dead_letter(path, TRUNCATED, f"{type(error).__name__}: {error}")


class DecodeImageFiles(beam.DoFn):
  """`ReadableFile` -> `Decoded`, or a dead letter on `DEAD_LETTERS`."""

  def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS):
    self.max_pixels = max_pixels
    self.decoded = beam.metrics.Metrics.counter("pseudo_label", "images_decoded")
    self.dead = beam.metrics.Metrics.counter("pseudo_label", "dead_letters")

  def process(self, readable_file) -> Iterator[Any]:
    path = readable_file.metadata.path
    try:
      data = readable_file.read()
    except Exception as e:  # pylint: disable=broad-except  (any file system error)
      self.dead.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(path, UNREADABLE, repr(e)))
      return
    try:
      rgb, encoded, image_format = decode_image(data, self.max_pixels)
    except Exception as e:  # pylint: disable=broad-except  (decoders raise anything)
      self.dead.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTERS, _failure(path, e))
      return
    self.decoded.inc()
    yield Decoded(image_codec.content_id(data), path, rgb, encoded, image_format)


class DecodeExamples(beam.DoFn):
  """(shard path, serialized tf.Example) -> `Decoded` keeping the example's
  features, or a dead letter."""

  def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS):
    self.max_pixels = max_pixels
    self.decoded = beam.metrics.Metrics.counter("pseudo_label", "images_decoded")
    self.dead = beam.metrics.Metrics.counter("pseudo_label", "dead_letters")

  def process(self, element) -> Iterator[Any]:
    shard, serialized = element
    if isinstance(serialized, str):  # The shard could not be read on from here.
      self.dead.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(shard, BAD_EXAMPLE, serialized))
      return
    try:
      example = tf.train.Example.FromString(serialized)
      feature = example.features.feature
      data = feature["image/encoded"].bytes_list.value[0]
    except Exception as e:  # pylint: disable=broad-except  (malformed protos)
      self.dead.inc()
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTERS, dead_letter(shard, BAD_EXAMPLE, f"{type(e).__name__}: {e}"))
      return
    source_ids = feature["image/source_id"].bytes_list.value if "image/source_id" in feature else []
    image_id = source_ids[0].decode() if source_ids and source_ids[0] else image_codec.content_id(data)
    path = f"{shard}#{image_id}"
    try:
      rgb, encoded, image_format = decode_image(data, self.max_pixels, apply_exif=False)
    except Exception as e:  # pylint: disable=broad-except  (decoders raise anything)
      self.dead.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTERS, _failure(path, e))
      return
    self.decoded.inc()
    yield Decoded(image_id, path, rgb, encoded, image_format, example=example)


def ground_truth_tasks(example: tf.train.Example | None) -> list[str]:
  """The tasks an input example carries ground truth for (sorted)."""
  if example is None:
    return []
  prefix, suffix = "must/", "/source"
  return sorted(
      key[len(prefix):-len(suffix)] for key, value in example.features.feature.items()
      if key.startswith(prefix) and key.endswith(suffix)
      and value.bytes_list.value[:1] == [schema_lib.GROUND_TRUTH.encode()])
