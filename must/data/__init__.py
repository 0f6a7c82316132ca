"""Labeled data sets of common formats (COCO, image folders, RGB-D) in the project's schema."""
