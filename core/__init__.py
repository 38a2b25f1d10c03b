"""hazardlens: the shared equipment/facility image sample library (设备设施样本库) and hazard detection.

This package (folder ``core/``) is the shared core: settings, database, object store, taxonomy,
audit and auth. It imports nothing from the parts built on it (datasets, labeling, training,
models, serving, cli), so that the dependency picture stays one-way.
"""

__version__ = "0.1.0"
