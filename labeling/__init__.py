"""Annotation: revisions, review workflow, queues, import/export formats, agreement, suggestions."""
