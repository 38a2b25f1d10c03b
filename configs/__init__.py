"""Shipped configuration (package data): taxonomy.yaml, class_maps/, augment/, train/.

Read them through ``hazardlens.settings.config_path(...)`` / ``config_files(...)``, never by a path
relative to the code: those honour ``HAZARDLENS_CONFIG_DIR``, a deployment's folder whose files win.
"""
