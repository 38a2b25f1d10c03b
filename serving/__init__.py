"""HTTP layer: a thin FastAPI app over the library, labeling, datasets, training and models."""
