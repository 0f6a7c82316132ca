"""Model Garden's NMS versions on CPU: time per image and agreement.

  .venv/bin/python -m benchmarks.nms [--batch 32] [--size 96] [--rounds 3]

Runs `MultilevelDetectionGenerator` (the detection teacher's and student's box
decoding + NMS) on the same RetinaNet-shaped raw outputs (P3-P5, 9 anchors per
location, 11 classes, logits drawn so a few hundred anchors pass the score
threshold per image) with each `nms_version`, and prints ms/image, the ratio to
`batched` and whether the kept detections match `batched`'s.
"""
import argparse
import time

import numpy as np
import tensorflow as tf

from official.vision.modeling.layers import detection_generator
from official.vision.ops import anchor

NUM_CLASSES = 11
VERSIONS = ("batched", "v1", "v2")


def raw_outputs(batch: int, size: int, seed: int = 0):
  """Anchors, box deltas and class logits shaped like the teacher's head outputs."""
  boxes = anchor.Anchor(min_level=3, max_level=5, num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
                        anchor_size=2.0, image_size=(size, size)).multilevel_boxes
  rng = np.random.default_rng(seed)
  anchors, deltas, logits = {}, {}, {}
  for level, level_boxes in boxes.items():
    height, width = level_boxes.shape[:2]
    anchors[level] = tf.tile(level_boxes[None], [batch, 1, 1, 1])
    deltas[level] = tf.constant(rng.normal(0, 0.1, (batch, height, width, 36)), tf.float32)
    logits[level] = tf.constant(rng.normal(-4, 1.5, (batch, height, width, 9 * NUM_CLASSES)),
                                tf.float32)
  return deltas, logits, anchors, tf.constant([[size, size]] * batch, tf.float32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  inputs = raw_outputs(args.batch, args.size)
  ms_per_image, detections = {}, {}
  for version in VERSIONS:
    generator = detection_generator.MultilevelDetectionGenerator(
        nms_version=version, max_num_detections=50, pre_nms_score_threshold=0.05)
    generate = tf.function(lambda: generator(*inputs))
    detections[version] = generate()  # traces
    start = time.perf_counter()
    for _ in range(args.rounds):
      generate()
    ms_per_image[version] = (time.perf_counter() - start) / args.rounds / args.batch * 1e3
  reference = detections["batched"]
  print(f"{'nms_version':<12}{'ms/image':>10}{'x batched':>11}  same detections as batched")
  for version in VERSIONS:
    kept = detections[version]
    same = (np.array_equal(kept["num_detections"], reference["num_detections"])
            and np.allclose(np.sort(kept["detection_scores"], axis=-1),
                            np.sort(reference["detection_scores"], axis=-1), atol=1e-5))
    print(f"{version:<12}{ms_per_image[version]:>10.2f}"
          f"{ms_per_image[version] / ms_per_image['batched']:>11.1f}  {same}")


if __name__ == "__main__":
  main()
