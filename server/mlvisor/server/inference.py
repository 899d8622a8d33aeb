"""The one typed inference request and response, whatever protocol carried them.

REST (V2 JSON, the binary tensor extension, KServe V1) and gRPC each decode into an
:class:`InferRequest` in their own codec module (``v2_json``, ``binary``, ``grpc_codec``),
the :class:`~mlvisor.server.dataplane.DataPlane` serves it and answers an
:class:`InferResponse`, which the same codec encodes. KServe's ``InferRequest``/``DataPlane``
and MLServer's ``types``/handlers are the models.

Named tuples: typed and immutable like a frozen dataclass, and built at a third of the cost
(every request builds a few of them; the server answers thousands a second).

Inputs arrive *decoded*: ``data`` is a flat (row-major) numpy array, numeric for the numeric
datatypes (float64 from JSON; the sent dtype from binary tensors and gRPC) and object (each
element ``str``, ``bytes`` or ``None``) for BYTES. Everything a codec can check without the
model is checked there (datatype names, shapes, data length, value kinds and ranges); what
depends on the model (input names, feature counts, columns, missing values) is the model's
(runtime.py). All are immutable: nobody downstream rewrites a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"

#: An empty, read-only parameters mapping (the usual case).
NO_PARAMETERS: Mapping[str, Any] = MappingProxyType({})


class InputTensor(NamedTuple):
    """One decoded input tensor.

    ``name`` is None only for KServe V1 ``instances``, which name no input.
    ``first_null`` is the flat index of the first JSON ``null`` in a floating-point tensor,
    whose value became NaN (None when there was none): a named column that takes missing
    values accepts it, the single-tensor input refuses it as before.
    """

    name: str | None
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    first_null: int | None = None

    @property
    def what(self) -> str:
        """How messages name this tensor."""
        return "'instances'" if self.name is None else f"input {self.name!r}"


class RequestedOutput(NamedTuple):
    name: str
    parameters: Mapping[str, Any] = NO_PARAMETERS


class InferRequest(NamedTuple):
    model_name: str
    model_version: str | None
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    """Empty: every output the model has."""
    id: str | None = None
    parameters: Mapping[str, Any] = NO_PARAMETERS


class OutputTensor(NamedTuple):
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any
    """A numpy array, or a list of str for string labels (BYTES)."""


class InferResponse(NamedTuple):
    model_name: str
    model_version: str
    outputs: tuple[OutputTensor, ...]
    id: str | None = None


def frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only view of a parameters mapping (the shared empty one for None or {})."""
    return MappingProxyType(dict(mapping)) if mapping else NO_PARAMETERS
