"""Drawing labels on images: boxes, mask overlays, depth and normal maps, plots.

One place for every picture the project makes (the world preview, pseudo-label
contact sheets, label statistics, reports). Everything takes NumPy arrays in
the schema's conventions (normalized boxes, class ids with 0 = background and
255 = ignore) and returns uint8 RGB arrays; `save_png` writes them. Plots are
drawn with matplotlib's Agg canvas directly (no pyplot, no global backend).
"""
import io
from typing import Any, Mapping, Sequence

import matplotlib
from matplotlib.backends import backend_agg
from matplotlib import figure as figure_lib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
import tensorflow as tf

IGNORE_LABEL = 255
_IGNORE_COLOR = (40, 40, 40)


def palette(num_classes: int) -> np.ndarray:
  """uint8 [256, 3] colours: 0 black, 1..num_classes distinct hues, 255 dark grey."""
  colors = np.zeros([256, 3], np.uint8)
  ids = np.arange(1, max(num_classes, 1))
  colors[ids] = np.round(matplotlib.colormaps["tab20"]((ids - 1) % 20)[:, :3] * 255)
  colors[IGNORE_LABEL] = _IGNORE_COLOR
  return colors


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour upscaling, so small images stay crisp under drawn text."""
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def overlay_mask(image: np.ndarray, mask: np.ndarray, num_classes: int,
                 alpha: float = 0.55) -> np.ndarray:
  """Blends the class colours over the image where the class is not background."""
  colors = palette(num_classes)[mask].astype(np.float32)
  blend = np.where((mask > 0)[..., None], alpha, 0.0)
  return np.round(image * (1 - blend) + colors * blend).astype(np.uint8)


def colorize_depth(depth: np.ndarray, valid: np.ndarray, inverse: bool = True) -> np.ndarray:
  """Depth [H, W] -> RGB with a perceptual colour map (near = bright).

  Args:
    depth: metric depth, or relative inverse depth when `inverse` is False.
    valid: bool [H, W]; invalid pixels are drawn black.
    inverse: take 1/depth first (metric depth); False for values that already
      grow toward the camera.
  """
  values = np.where(valid, depth, np.nan).astype(np.float64)
  if inverse:
    values = 1.0 / values
  if valid.any():
    lo, hi = np.nanpercentile(values, [1, 99])
    values = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
  rgb = matplotlib.colormaps["magma"](np.nan_to_num(values))[..., :3]
  rgb[~valid] = 0
  return np.round(rgb * 255).astype(np.uint8)


def colorize_normals(normals: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Unit normals [H, W, 3] -> RGB with the usual (n + 1) / 2 mapping; invalid pixels black."""
  rgb = np.round((np.clip(normals, -1, 1) + 1) * 127.5).astype(np.uint8)
  rgb[~valid] = 0
  return rgb


def draw_boxes(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
               names: Sequence[str], scores: np.ndarray | None = None) -> np.ndarray:
  """A copy of `image` with normalized [N, 4] (ymin, xmin, ymax, xmax) boxes drawn,
  captioned with names[class id] (and the scores), one colour per name."""
  height, width = image.shape[:2]
  colors = palette(len(names))
  canvas = Image.fromarray(image)
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  for i, (box, cls) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), classes)):
    ymin, xmin, ymax, xmax = box * [height, width, height, width]
    color = tuple(int(c) for c in colors[int(cls)])
    draw.rectangle([xmin, ymin, xmax - 1, ymax - 1], outline=color, width=2)
    caption = names[int(cls)] if int(cls) < len(names) else str(int(cls))
    if scores is not None:
      caption += f" {scores[i]:.2f}"
    text_box = draw.textbbox((xmin + 2, ymin + 1), caption, font=font)
    draw.rectangle(text_box, fill=color)
    draw.text((xmin + 2, ymin + 1), caption, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def caption(panel: np.ndarray, text: str, height: int = 14) -> np.ndarray:
  """Adds a strip of text above a panel."""
  strip = Image.new("RGB", (panel.shape[1], height), (255, 255, 255))
  ImageDraw.Draw(strip).text((3, 1), text, fill=(0, 0, 0), font=ImageFont.load_default())
  return np.concatenate([np.asarray(strip), panel], axis=0)


def grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 4) -> np.ndarray:
  """Lays panels out in rows on a white sheet; panels may differ in size."""
  def padded(panel, height, width):
    return np.pad(panel, [(0, height - panel.shape[0]), (0, width - panel.shape[1]), (0, 0)],
                  constant_values=255)
  row_images = [np.concatenate([padded(p, max(q.shape[0] for q in row) + pad, p.shape[1] + pad)
                                for p in row], axis=1) for row in rows]
  width = max(r.shape[1] for r in row_images)
  return np.concatenate([padded(r, r.shape[0], width) for r in row_images])


def labels_panels(image: np.ndarray, labels: Mapping[str, Any], tasks: Mapping[str, Any],
                  names: Sequence[str], *, scale: int = 3, top_k: int = 3) -> list[np.ndarray]:
  """One row of captioned panels: the image, then each label as its task draws it.

  Args:
    image: uint8 [H, W, 3].
    labels: task name -> that task's label dataclass.
    tasks: task name -> its `must.tasks` object (`title` and `draw`).
    names: category names by id (0 = background).
    scale: nearest-neighbour upscaling of every panel.
    top_k: classes named on the image panel.
  """
  big = upscale(image, scale)
  title = " ".join(filter(None, (tasks[t].title(label, names, top_k)
                                 for t, label in labels.items())))
  panels = [caption(big, title or "image")]
  for task, label in labels.items():
    panels += [caption(panel, text) for panel, text in tasks[task].draw(label, big, names, scale)]
  return panels


def contact_sheet(rows: Sequence[tuple[str, Sequence[np.ndarray]]], title: str = "") -> np.ndarray:
  """Rows of panels, each under a caption line, on one sheet with a title line.

  Args:
    rows: (caption, panels) per row, e.g. an image id and `labels_panels`.
    title: the sheet's first line.
  """
  captioned = [[caption(grid([panels], pad=2), text)] for text, panels in rows]
  sheet = grid(captioned)
  return caption(sheet, title, height=16) if title else sheet


def _bars(axes, labels: Sequence[str], values: Sequence[float], title: str, color: str) -> None:
  positions = np.arange(len(values))
  axes.bar(positions, values, color=color)
  positive = [v for v in values if v > 0]
  if positive and max(positive) > 50 * min(positive):  # e.g. background pixels
    axes.set_yscale("log")
  axes.set_xticks(positions, labels, rotation=60 if len(labels) > 6 else 0, fontsize=7)
  axes.tick_params(axis="y", labelsize=7)
  axes.set_title(title, fontsize=9)


def label_stats_panels(task_stats: Mapping[str, Mapping[str, Any]],
                       names: Sequence[str]) -> list[tuple[str, list[str], list[float]]]:
  """The plots of a run's label statistics: (title, bar labels, bar heights) each.

  Args:
    task_stats: task -> its statistics as the labeling pipeline's summary
      has them (`class_histogram`, `score_histogram`,
      `boxes_per_image_histogram`, `ignored_fraction_histogram`, ...); read
      by their keys, with no task names.
    names: category names by id.
  """
  def by_id(histogram, labels=lambda i: i):  # {id: count} sorted by id
    ids = sorted(histogram, key=int)
    return [labels(i) for i in ids], [histogram[i] for i in ids]

  def binned(counts):  # counts of equal bins over [0, 1]
    return [f"{i / len(counts):.1f}" for i in range(len(counts))], list(counts)

  def name(i):
    return names[int(i)] if int(i) < len(names) else i

  plots = []
  for task, t in sorted(task_stats.items()):
    if t.get("class_histogram"):
      unit = "boxes" if "boxes" in t else "labeled pixels" if "pixels" in t else "images (top-1)"
      plots.append((f"{task}: {unit} per class", *by_id(t["class_histogram"], name)))
    if t.get("score_histogram"):
      plots.append((f"{task}: scores", *binned(t["score_histogram"])))
    if t.get("boxes_per_image_histogram"):
      plots.append((f"{task}: boxes per image ({t.get('boxes_per_image', 0):.1f} mean)",
                    *by_id(t["boxes_per_image_histogram"])))
    if t.get("ignored_fraction_histogram"):
      plots.append((f"{task}: ignored-pixel fraction per image "
                    f"({t.get('ignored_pixel_fraction', 0):.2f} overall)",
                    *binned(t["ignored_fraction_histogram"])))
  return plots


def plot_label_stats(task_stats: Mapping[str, Mapping[str, Any]], names: Sequence[str],
                     title: str = "", columns: int = 3, dpi: int = 80) -> np.ndarray:
  """Bar charts of `label_stats_panels` on one figure, as an RGB array."""
  plots = label_stats_panels(task_stats, names) or [("no label statistics", [], [])]
  rows = -(-len(plots) // columns)
  fig = figure_lib.Figure(figsize=(4 * columns, 2.8 * rows + 0.4), dpi=dpi)
  canvas = backend_agg.FigureCanvasAgg(fig)
  colors = matplotlib.colormaps["tab10"]
  for i, (plot_title, labels, values) in enumerate(plots):
    _bars(fig.add_subplot(rows, columns, i + 1), labels, values, plot_title, colors(i % 10))
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(image: np.ndarray, path: str) -> None:
  """Writes an RGB array as PNG (any Beam/TF file system path works)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
