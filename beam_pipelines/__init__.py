"""Apache Beam pipelines of the MuST data engine (pseudo-labeling)."""
