"""The job types a browser may submit: a registry of named functions. No Ray here.

The page's submit form must not take arbitrary ``module:function`` strings (that would let
anyone who can open the page run any importable code): it offers the registered types only.
By default those are the examples of ``jobs.examples``; an operator adds more with
``control-plane serve --job-type module:function`` (repeatable).

Each type's parameters come from ``inspect.signature``; the first parameter (the job's
context) is skipped. A parameter's kind is read from its annotation, else from its default:
``int``, ``float``, ``str`` or ``bool`` (anything else is taken as ``str``). ``*args`` and
``**kwargs``, which a form cannot fill, are left out.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from control_plane.core.errors import ControlPlaneError

# The examples a newcomer can submit from the page (the edge-testing ones are left out).
DEFAULT_TYPES = (
    "jobs.examples:countdown",
    "jobs.examples:countdown_sync",
    "jobs.examples:resumable_sum",
    "jobs.examples:agents_pipeline",
    "jobs.examples:fail",
)
KINDS: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}


class JobTypeError(ControlPlaneError):
    """A submit names an unknown type or parameter, or a value of the wrong kind."""

    code = "invalid_job"


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # int | float | str | bool
    default: Any
    required: bool

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "default": self.default,
            "required": self.required,
        }


@dataclass(frozen=True)
class JobType:
    name: str  # the function's name, what the browser sends
    target: str  # module:function
    summary: str  # the docstring's first line
    params: tuple[Param, ...]

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "summary": self.summary,
            "params": [p.public() for p in self.params],
        }

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments for a submit: ``params`` checked against the signature
        (ints are accepted for a float; a missing optional one takes its default)."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise JobTypeError(f"{self.name} has no parameter {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for p in self.params:
            if p.name not in params:
                if p.required:
                    raise JobTypeError(f"{self.name} needs {p.name} ({p.kind})")
                continue
            kwargs[p.name] = _checked(self.name, p, params[p.name])
        return kwargs


def _checked(type_name: str, param: Param, value: Any) -> Any:
    wanted = KINDS[param.kind]
    ok = isinstance(value, wanted) and not (wanted is not bool and isinstance(value, bool))
    if param.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise JobTypeError(
            f"{type_name}: {param.name} must be {param.kind}, not {type(value).__name__}"
        )
    return value


def _kind(annotation: Any, default: Any) -> str:
    if isinstance(annotation, str):  # postponed annotations (from __future__ import annotations)
        head = annotation.split("|")[0].strip()
        if head in KINDS:
            return head
    elif isinstance(annotation, type) and annotation.__name__ in KINDS:
        return annotation.__name__
    if default is not inspect.Parameter.empty and default is not None:
        for name, kind in KINDS.items():  # bool before int: True is an int too
            if isinstance(default, kind):
                return name
    return "str"


def describe(target: str) -> JobType:
    """The job type of ``module:function``; an import or lookup failure raises."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise JobTypeError(f"a job type is module:function, not {target!r}")
    try:
        fn: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise JobTypeError(f"cannot load job type {target!r}: {e}") from e
    params: list[Param] = []
    for i, p in enumerate(inspect.signature(fn).parameters.values()):
        if i == 0 or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue  # the JobContext; and what a form cannot fill
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        params.append(Param(p.name, _kind(p.annotation, p.default), default, required))
    summary = (inspect.getdoc(fn) or "").strip().split("\n")[0]
    return JobType(attr, target, summary, tuple(params))


class JobTypes:
    """The registered types by name (a later registration of a name replaces the earlier)."""

    def __init__(self, targets: Iterable[str] = DEFAULT_TYPES) -> None:
        self._types: dict[str, JobType] = {}
        for target in targets:
            self.register(target)

    def register(self, target: str) -> JobType:
        job_type = describe(target)
        self._types[job_type.name] = job_type
        return job_type

    def public(self) -> list[dict[str, Any]]:
        return [t.public() for t in self._types.values()]

    def get(self, name: Any) -> JobType:
        job_type = self._types.get(name) if isinstance(name, str) else None
        if job_type is None:
            raise JobTypeError(f"unknown job type {name!r}; known: {', '.join(self._types)}")
        return job_type

    def resolve(self, request: Any) -> tuple[JobType, dict[str, Any]]:
        """``{"type": name, "params": {...}}`` as the type and checked keyword arguments."""
        if not isinstance(request, dict):
            raise JobTypeError('a submit is {"type": name, "params": {...}}')
        extra = sorted(set(request) - {"type", "params"})
        if extra:
            raise JobTypeError(f"unknown field {', '.join(extra)}")
        params = request.get("params")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise JobTypeError("params must be an object")
        job_type = self.get(request.get("type"))
        return job_type, job_type.validate(params)
