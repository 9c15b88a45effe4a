"""The registry of job types the page may submit: parameters read from signatures, and a
submit checked against them."""

from __future__ import annotations

import pytest

from control_plane.core.job_types import DEFAULT_TYPES, JobTypeError, JobTypes, describe


def typed(ctx: object, name: str, count: int = 3, *, ratio: float = 0.5, loud: bool = False) -> str:
    """Say hello.

    More words that the form does not show."""
    return name


def untyped(ctx, steps=4, scale=1.5, label="x", flag=True, other=None, *rest, **extra):  # type: ignore[no-untyped-def]
    return steps


def test_the_examples_are_registered_by_default() -> None:
    names = [t["name"] for t in JobTypes().public()]
    assert names == [target.partition(":")[2] for target in DEFAULT_TYPES]
    assert "spin" not in names  # a job only a forced cancel stops is not offered


def test_parameters_come_from_annotations_and_defaults_without_the_context() -> None:
    job_type = describe(f"{__name__}:typed")
    assert job_type.summary == "Say hello."
    assert [p.public() for p in job_type.params] == [
        {"name": "name", "kind": "str", "default": None, "required": True},
        {"name": "count", "kind": "int", "default": 3, "required": False},
        {"name": "ratio", "kind": "float", "default": 0.5, "required": False},
        {"name": "loud", "kind": "bool", "default": False, "required": False},
    ]
    kinds = {p.name: p.kind for p in describe(f"{__name__}:untyped").params}
    assert kinds == {
        "steps": "int",
        "scale": "float",
        "label": "str",
        "flag": "bool",
        "other": "str",
    }


def test_a_submit_is_checked_against_the_signature() -> None:
    types = JobTypes([f"{__name__}:typed"])
    job_type, kwargs = types.resolve({"type": "typed", "params": {"name": "a", "ratio": 2}})
    assert job_type.target == f"{__name__}:typed"
    assert kwargs == {"name": "a", "ratio": 2.0}  # an int is a fine float; defaults left out
    bad = [
        ({"type": "nope"}, "unknown job type"),
        ({"type": f"{__name__}:typed", "params": {"name": "a"}}, "unknown job type"),
        ({"type": "typed", "params": {}}, "needs name"),
        ({"type": "typed", "params": {"name": "a", "x": 1}}, "no parameter x"),
        ({"type": "typed", "params": {"name": "a", "count": True}}, "count must be int"),
        ({"type": "typed", "params": {"name": "a", "count": 1.0}}, "count must be int"),
        ({"type": "typed", "params": {"name": 1}}, "name must be str"),
        ({"type": "typed", "params": {"name": "a", "loud": 1}}, "loud must be bool"),
        ({"type": "typed", "params": []}, "params must be an object"),
        ({"type": "typed", "module": "os"}, "unknown field module"),
        (["typed"], "a submit is"),
    ]
    for request, says in bad:
        with pytest.raises(JobTypeError, match=says):
            types.resolve(request)


def test_an_operator_registers_more_types_and_a_bad_one_fails_at_once() -> None:
    types = JobTypes([*DEFAULT_TYPES, f"{__name__}:typed"])
    assert types.get("typed").name == "typed"
    for target in ("no_colon", "no.such.module:f", f"{__name__}:missing"):
        with pytest.raises(JobTypeError):
            JobTypes([target])
