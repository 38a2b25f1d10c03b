"""hazardlens' contract layer: the typed shapes that cross a boundary between parts.

Inputs (sample filter, job parameters, training config...) and outputs (sample, revision,
detection, finding, job, model version...) are pydantic models defined once here, in the core, so
the domain functions, the HTTP routes (``response_model`` on every route), the CLI's ``--json``
output and the Python client all speak the same types, and the OpenAPI document describes them.
"""

from hazardlens.contracts.common import (
    AnnotationState,
    Contract,
    ErrorBody,
    ErrorResponse,
    Key,
    Message,
    OrgCode,
    Public,
    SampleSource,
    Scope,
    Text100,
    Text200,
)
from hazardlens.contracts.filters import SampleFilter

__all__ = [
    "AnnotationState",
    "Contract",
    "ErrorBody",
    "ErrorResponse",
    "Key",
    "Message",
    "OrgCode",
    "Public",
    "SampleFilter",
    "SampleSource",
    "Scope",
    "Text100",
    "Text200",
]
