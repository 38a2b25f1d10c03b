"""ASGI entry point for ``uvicorn hazardlens.serving.main:app`` (settings from HAZARDLENS_* env)."""

from hazardlens.serving.app import create_app
from hazardlens.serving.logging import configure_logging

configure_logging()  # a served process logs JSON lines with request ids (serving/logging.py)
app = create_app()
