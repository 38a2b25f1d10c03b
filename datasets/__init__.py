"""The sample library (ingest, catalogue, search, near-duplicates) and dataset versions."""
