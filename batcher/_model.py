"""Reading a model, describing its per-sample inputs and outputs, and compiling each size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import openvino as ov

from ._errors import InvalidSample

__all__ = ["ModelSource", "ModelSpec", "TensorSpec", "compile_for_batch", "read_model"]

ModelSource: TypeAlias = str | PathLike[str] | ov.Model


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of the model, per sample (the batch axis removed)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def _port_name(port: Any, fallback: str) -> str:
    names = port.get_names()
    if names:
        return str(port.get_any_name())
    friendly = port.get_node().get_friendly_name()
    return str(friendly) if friendly else fallback


def read_model(core: ov.Core, source: ModelSource) -> ov.Model:
    """An ``openvino.Model`` from an IR (.xml) or ONNX path, or the model itself."""
    if isinstance(source, ov.Model):
        return source
    return core.read_model(str(source))


def _per_sample_shape(port: Any, what: str, name: str) -> tuple[int, ...]:
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() < 1:
        raise ValueError(
            f"{what} {name!r} must have a batch axis first and a known rank, got shape {shape}"
        )
    rest = shape[1:] if shape.rank.get_length() > 1 else ov.PartialShape([])
    if not rest.is_static:
        raise ValueError(
            f"{what} {name!r} has shape {shape}: every axis but the first (batch) must be "
            "static; reshape the model to fixed per-sample shapes first"
        )
    return tuple(int(d) for d in rest.to_shape())


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What one sample looks like going in and coming out."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, model: ov.Model) -> ModelSpec:
        inputs = []
        for i, port in enumerate(model.inputs):
            name = _port_name(port, f"input{i}")
            dtype = np.dtype(port.get_element_type().to_dtype())
            inputs.append(TensorSpec(name, _per_sample_shape(port, "input", name), dtype))
        outputs = []
        for i, port in enumerate(model.outputs):
            name = _port_name(port, f"output{i}")
            dtype = np.dtype(port.get_element_type().to_dtype())
            outputs.append(TensorSpec(name, (), dtype))  # shape is known only after reshape
        if not inputs:
            raise ValueError("the model must have at least one input")
        return cls(tuple(inputs), tuple(outputs))

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def validate(self, sample: object, casting: str) -> tuple[npt.NDArray[Any], ...]:
        """The sample as one array per input, in model order, or :class:`InvalidSample`."""
        if type(sample) is np.ndarray and len(self.inputs) == 1:
            spec = self.inputs[0]
            if sample.shape == spec.shape and sample.dtype == spec.dtype:
                return (sample,)  # the common case, checked without any conversion
        if isinstance(sample, Mapping):
            given = set(sample)
            expected = set(self.input_names)
            if given != expected:
                missing = sorted(expected - given, key=str)
                extra = sorted(given - expected, key=str)
                raise InvalidSample(
                    f"expected inputs {list(self.input_names)}, got {sorted(given, key=str)}"
                    + (f" (missing {missing})" if missing else "")
                    + (f" (unknown {extra})" if extra else "")
                )
            values = [sample[name] for name in self.input_names]
        elif len(self.inputs) == 1:
            values = [sample]
        else:
            raise InvalidSample(
                f"this model has {len(self.inputs)} inputs: pass a mapping of "
                f"{list(self.input_names)} to arrays, got {type(sample).__name__}"
            )
        return tuple(
            _conform(spec, value, casting) for spec, value in zip(self.inputs, values, strict=True)
        )


def _conform(spec: TensorSpec, value: object, casting: str) -> npt.NDArray[Any]:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidSample(f"input {spec.name!r}: cannot be read as an array ({exc})") from exc
    if array.shape != spec.shape:
        raise InvalidSample(
            f"input {spec.name!r}: expected shape {spec.shape} (one sample, without the batch "
            f"axis), got {array.shape}"
        )
    if array.dtype != spec.dtype:
        if not np.can_cast(array.dtype, spec.dtype, casting=casting):  # type: ignore[arg-type]
            raise InvalidSample(
                f"input {spec.name!r}: expected dtype {spec.dtype}, got {array.dtype}, which "
                f"cannot be cast under input_casting={casting!r}"
            )
        array = array.astype(spec.dtype)
    return array


def compile_for_batch(
    core: ov.Core,
    model: ov.Model,
    batch: int,
    device: str,
    properties: Mapping[str, str],
) -> Any:
    """Compile a copy of ``model`` with its batch axis fixed to ``batch`` (-1 keeps it dynamic)."""
    copy = model.clone()
    shapes = {}
    for port in copy.inputs:
        dims = list(port.get_partial_shape())
        dims[0] = ov.Dimension(batch) if batch > 0 else ov.Dimension()
        shapes[port] = ov.PartialShape(dims)
    copy.reshape(shapes)
    for i, port in enumerate(copy.outputs):
        shape = port.get_partial_shape()
        leading = shape[0] if shape.rank.is_static and shape.rank.get_length() > 0 else None
        expected = ov.Dimension(batch) if batch > 0 else ov.Dimension()
        if leading is None or leading != expected:
            raise ValueError(
                f"output {i} has shape {shape} after setting the batch to {batch}: every "
                "output must carry the batch axis first"
            )
    return core.compile_model(copy, device, dict(properties))
