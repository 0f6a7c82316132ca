"""Image encoding on the NumPy side (for Beam and the world generator).

OpenCV's codecs are used because they are fast and write 16-bit PNGs with one
or three channels (Pillow cannot write 16-bit RGB). Arrays are RGB in and out;
the BGR order OpenCV uses is handled here and nowhere else.
"""
import hashlib

import cv2
import numpy as np

PNG = "png"
JPEG = "jpeg"
FORMATS = (PNG, JPEG)


def _to_cv(array: np.ndarray) -> np.ndarray:
  if array.ndim == 3 and array.shape[2] == 3:
    return np.ascontiguousarray(array[..., ::-1])
  return array


def encode_png(array: np.ndarray, compression: int = 1) -> bytes:
  """Encodes a uint8 or uint16 array of shape [H, W] or [H, W, 3] as PNG.

  Args:
    array: the pixels; RGB order when it has three channels.
    compression: zlib level 0-9; low levels are much faster and PNG stays
      lossless at every level.

  Returns:
    The PNG file bytes.
  """
  if array.dtype not in (np.uint8, np.uint16):
    raise ValueError(f"PNG takes uint8 or uint16 pixels, got {array.dtype}")
  if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
    raise ValueError(f"PNG takes [H, W] or [H, W, 1|3] arrays, got {array.shape}")
  ok, buf = cv2.imencode(".png", _to_cv(array),
                         [cv2.IMWRITE_PNG_COMPRESSION, compression])
  if not ok:
    raise ValueError(f"OpenCV could not encode a {array.shape} array as PNG")
  return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
  """Encodes a uint8 [H, W, 3] RGB array as JPEG."""
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ValueError(f"JPEG takes uint8 [H, W, 3] RGB, got {rgb.dtype} {rgb.shape}")
  ok, buf = cv2.imencode(".jpg", _to_cv(rgb), [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise ValueError(f"OpenCV could not encode a {rgb.shape} array as JPEG")
  return buf.tobytes()


def encode_image(rgb: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
  """Encodes an RGB image in `image_format` ('png' or 'jpeg')."""
  if image_format == PNG:
    return encode_png(rgb)
  if image_format == JPEG:
    return encode_jpeg(rgb, jpeg_quality)
  raise ValueError(f"unknown image format {image_format!r}; valid: {FORMATS}")


def decode_png(data: bytes) -> np.ndarray:
  """Decodes PNG bytes keeping bit depth and channels (RGB order)."""
  array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if array is None:
    raise ValueError("not a decodable PNG")
  return _to_cv(array)


HASH_SPACE = 16 ** 15  # stable_hash values are in [0, HASH_SPACE), under 2**60


def stable_hash(data: bytes | str) -> int:
  """A hash of `data` that is the same on every machine, run and Python."""
  return int(hashlib.sha1(data.encode() if isinstance(data, str) else data).hexdigest()[:15], 16)


def content_id(data: bytes) -> str:
  """A stable id of an image from its encoded bytes, `stable_hash` in decimal.

  Decimal because Model Garden's detection evaluation parses
  `image/source_id` as the int64 COCO image id.
  """
  return str(stable_hash(data))
