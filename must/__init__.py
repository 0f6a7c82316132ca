"""MuST: multi-task self-training data engine (library code).

Model Garden is Keras 2 code, so the legacy Keras switch is set before anything
imports TensorFlow.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
