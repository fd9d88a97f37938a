"""The dataset-agnostic runner of the paper's modes (affinity, cs, mtl, stl, ...)."""
