"""ASGI entry point for ``uvicorn hazardlens.serving.main:app`` (settings from HAZARDLENS_* env)."""

from hazardlens.serving.app import create_app

app = create_app()
