"""Datasets: the coordinate-prediction manifolds (paper Table 3) and their npz loader."""
from rtjax.data.coordinate import (DATASETS, CoordinateData, coordinate_dataset, load_npz, mix_coordinates,
                                   sample_shape, split)

__all__ = ["DATASETS", "CoordinateData", "coordinate_dataset", "load_npz", "mix_coordinates", "sample_shape",
           "split"]
