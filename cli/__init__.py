"""Command line: a thin layer over the library; every module here with ``register(app)`` adds commands."""
