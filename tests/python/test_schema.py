"""The Python model classes against the core's event and state schema (docs/schema.json).

The schema is generated from the core types (crabnet-core/tests/schema.rs keeps the committed
copy up to date), so a change of a core type that the Python classes do not follow fails here:
every class must have the same fields, a default exactly for the fields the core may leave
out, ``Optional`` exactly for the fields that may be null, and a matching type.
"""

from __future__ import annotations

import dataclasses
import json
import typing
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import pytest

import crabnet
from crabnet import _model
from helpers import MakeNode, claimed, make_pair

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "schema.json"
SCHEMA: Dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
DEFS: Dict[str, Any] = SCHEMA["$defs"]

# Python class -> the schema type it mirrors.
CLASSES: Dict[Type[_model._Record], str] = {
    _model.Deadlines: "Deadlines",
    _model.PastRound: "PastRound",
    _model.Replication: "Replication",
    _model.ReplicaView: "ReplicaView",
    _model.Seed: "Seed",
    _model.Bid: "BidView",
    _model.Award: "AwardView",
    _model.Claim: "ClaimView",
    _model.SandboxInfo: "SandboxInfo",
    _model.SandboxStatus: "SandboxStatus",
    _model.TaskResult: "TaskResult",
    _model.Settlement: "SettlementView",
    _model.SeedView: "SeedView",
    _model.Overview: "Overview",
    _model.PeerInfo: "PeerInfo",
    _model.Reputation: "Reputation",
    _model.KeyRotation: "RotationInfo",
}

# Python enum -> the schema enum it mirrors.
ENUMS: Dict[Type[Enum], str] = {
    _model.SeedStatus: "SeedStatus",
    _model.RoundEnd: "RoundEnd",
    _model.OutputHash: "OutputHash",
    _model.ReplicaStanding: "ReplicaStanding",
    _model.SettlementOutcome: "SettlementOutcome",
    _model.SandboxLevel: "SandboxLevel",
    _model.SandboxPolicy: "SandboxPolicy",
    _model.RejectReason: "RejectReason",
    _model.AlertName: "AlertName",
}

# Schema types with no class of their own: flattened into one (`Bid` into `BidView`,
# `Settlement` into `SettlementView`), events (one class per variant), violations (one class
# for every rule, with the rule's fields as a mapping) and enums that Python keeps as strings.
NOT_MIRRORED = {
    "Bid",
    "Settlement",
    "Event",
    "EventKind",
    "Violation",
    "Action",
    "MessageKind",
}


class Field:
    """One property of a schema object, resolved to what a Python field must look like."""

    def __init__(self, schema: Mapping[str, Any], required: bool) -> None:
        self.required = required
        self.nullable = False
        inner: Mapping[str, Any] = schema
        alternatives = schema.get("oneOf")
        if alternatives is not None and len(alternatives) == 2:
            rest = [a for a in alternatives if a.get("type") != "null"]
            if len(rest) == 1:
                self.nullable = True
                inner = rest[0]
        types = inner.get("type")
        if isinstance(types, list):
            self.nullable = self.nullable or "null" in types
            (single,) = [t for t in types if t != "null"]
            inner = {**inner, "type": single}
        self.schema = inner


def object_fields(schema: Mapping[str, Any]) -> Dict[str, Field]:
    """The properties of an object schema, following references and flattened (`allOf`)
    parts."""
    if "$ref" in schema:
        return object_fields(DEFS[ref_name(schema)])
    if "allOf" in schema:
        out: Dict[str, Field] = {}
        for part in schema["allOf"]:
            out.update(object_fields(part))
        return out
    required = set(schema.get("required", ()))
    return {
        name: Field(prop, name in required) for name, prop in schema["properties"].items()
    }


def ref_name(schema: Mapping[str, Any]) -> str:
    ref = str(schema["$ref"])
    assert ref.startswith("#/$defs/"), ref
    return ref[len("#/$defs/") :]


def unwrap_optional(tp: Any) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_problem(tp: Any, schema: Mapping[str, Any]) -> Optional[str]:
    """Why the annotation `tp` cannot hold values of `schema` (None when it can)."""
    if "$ref" in schema:
        name = ref_name(schema)
        target = DEFS[name]
        if isinstance(tp, type) and issubclass(tp, Enum):
            return None if ENUMS.get(tp) == name else f"{tp.__name__} does not mirror {name}"
        if isinstance(tp, type) and issubclass(tp, _model._Record):
            if name == "Violation":
                return None if tp is _model.Violation else f"{tp.__name__} is not Violation"
            return None if CLASSES.get(tp) == name else f"{tp.__name__} does not mirror {name}"
        if target.get("type") == "string":
            # Ids, and enums that Python keeps as plain strings.
            return None if tp is str else f"{tp} for the string type {name}"
        return f"{tp} for {name}"
    kind = schema.get("type")
    if kind == "string" and "enum" in schema and isinstance(tp, type) and issubclass(tp, Enum):
        # An enum inlined (as a map's keys).
        values = [m.value for m in tp]
        return None if values == schema["enum"] else f"{tp.__name__} for the enum {schema}"
    if kind == "integer":
        return None if tp is int else f"{tp} for an integer"
    if kind == "boolean":
        return None if tp is bool else f"{tp} for a boolean"
    if kind == "string":
        return None if tp is str else f"{tp} for a string"
    if kind == "array":
        args = typing.get_args(tp)
        if typing.get_origin(tp) is not tuple or len(args) != 2 or args[1] is not Ellipsis:
            return f"{tp} for an array (expected Tuple[..., ...])"
        return type_problem(args[0], schema["items"])
    if kind == "object" and "additionalProperties" in schema:
        origin = typing.get_origin(tp)
        if origin is None or origin.__name__ != "Mapping":
            return f"{tp} for a map (expected Mapping)"
        key, value = typing.get_args(tp)
        return type_problem(key, schema["propertyNames"]) or type_problem(
            value, schema["additionalProperties"]
        )
    return f"{tp} for the unknown schema {schema}"


def field_problems(
    cls: Type[_model._Record], expected: Mapping[str, Field], skip: Tuple[str, ...] = ()
) -> List[str]:
    hints = cls._field_types()
    json_names = {py: js for js, py in cls._JSON_NAMES.items()}
    ours = {
        json_names.get(f.name, f.name): f
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in skip
    }
    problems: List[str] = []
    for name in sorted(set(expected) - set(ours)):
        problems.append(f"{cls.__name__} lacks the field {name!r}")
    for name in sorted(set(ours) - set(expected)):
        problems.append(f"{cls.__name__} has the field {name!r}, which the core does not send")
    for name in sorted(set(ours) & set(expected)):
        py, core = ours[name], expected[name]
        has_default = (
            py.default is not dataclasses.MISSING or py.default_factory is not dataclasses.MISSING
        )
        if has_default == core.required:
            problems.append(
                f"{cls.__name__}.{py.name}: the core "
                + ("always sends it, so it must have no default" if core.required else
                   "may leave it out, so it needs a default")
            )
        tp, optional = unwrap_optional(hints[py.name])
        if optional != core.nullable:
            problems.append(
                f"{cls.__name__}.{py.name}: the core "
                + ("may send null, so it must be Optional" if core.nullable else
                   "never sends null, so it must not be Optional")
            )
        problem = type_problem(tp, core.schema)
        if problem is not None:
            problems.append(f"{cls.__name__}.{py.name}: {problem}")
    return problems


def event_variants() -> Dict[str, Mapping[str, Any]]:
    out = {}
    for variant in DEFS["EventKind"]["oneOf"]:
        (name,) = variant["properties"]["type"]["enum"]
        out[name] = variant
    return out


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_model_class_matches_the_schema(cls: Type[_model._Record]) -> None:
    problems = field_problems(cls, object_fields(DEFS[CLASSES[cls]]))
    assert not problems, "\n".join(problems)


def test_every_schema_type_has_a_python_counterpart() -> None:
    mirrored = set(CLASSES.values()) | set(ENUMS.values()) | NOT_MIRRORED
    ids = {name for name, d in DEFS.items() if d.get("type") == "string" and "enum" not in d}
    assert ids >= {"NodeId", "SeedId", "BidId", "MessageId"}
    unknown = set(DEFS) - mirrored - ids
    assert not unknown, f"schema types without a Python class: {sorted(unknown)}"
    records = {
        c for c in vars(_model).values() if isinstance(c, type) and issubclass(c, _model._Record)
    }
    events = set(_model._EVENT_TYPES.values()) | {_model.Event, _model.UnknownEvent}
    assert records - events - {_model._Record, _model.Violation} == set(CLASSES)


@pytest.mark.parametrize("enum", list(ENUMS), ids=lambda e: e.__name__)
def test_enum_values_match_the_schema(enum: Type[Enum]) -> None:
    assert [m.value for m in enum] == DEFS[ENUMS[enum]]["enum"]


def test_event_base_fields_match_the_schema() -> None:
    (common,) = [p for p in DEFS["Event"]["allOf"] if "properties" in p]
    problems = field_problems(_model.Event, object_fields(common))
    assert not problems, "\n".join(problems)


def test_every_event_type_has_a_class() -> None:
    assert set(event_variants()) == set(crabnet.EVENT_TYPES)


@pytest.mark.parametrize("name", sorted(event_variants()))
def test_event_class_matches_the_schema(name: str) -> None:
    cls = _model._EVENT_TYPES[name]
    expected = {k: v for k, v in object_fields(event_variants()[name]).items() if k != "type"}
    problems = field_problems(cls, expected, skip=("seq", "at"))
    assert not problems, "\n".join(problems)


def test_violation_rules_are_documented() -> None:
    rules = {v["properties"]["rule"]["enum"][0] for v in DEFS["Violation"]["oneOf"]}
    assert {"wrong_status", "not_publisher", "unknown_seed"} <= rules


def test_the_check_notices_a_drifted_class() -> None:
    # A class that lost a field, gained one, and got a field's optionality wrong.
    @dataclasses.dataclass(frozen=True)
    class Drifted(_model._Record):
        claimer: Optional[str]
        bid_id: str = ""
        note: str = ""

    problems = field_problems(Drifted, object_fields(DEFS["ClaimView"]))
    text = "\n".join(problems)
    assert "lacks the field 'claimed_at'" in text
    assert "has the field 'note'" in text
    assert "Drifted.claimer: the core never sends null" in text
    assert "Drifted.bid_id: the core always sends it" in text


def _seed_view_fields(make_node: MakeNode) -> Dict[str, Any]:
    """A seed's view as the native module hands it over: claimed, so that every kind of field
    (records, optional records, tuples of records, enums, defaults) is there."""
    publisher, runner = make_pair(make_node)
    view = claimed(publisher, runner, "echo view")
    fields: Dict[str, Any] = runner._node().seed(view.id)
    return fields


def test_a_record_with_a_missing_field_fails_and_an_unknown_field_warns_once(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer core may send a field this package does not know: the record is built without
    it, and a ``SchemaWarning`` says so once per class and field. A field the core must send
    and did not is an ``InternalError`` that names it."""
    monkeypatch.setattr(_model, "_warned", set())
    data = _seed_view_fields(make_node)
    without = {k: v for k, v in data.items() if k != "status"}
    with pytest.raises(crabnet.InternalError, match="a SeedView without status"):
        crabnet.SeedView._from_fields(without)
    newer = dict(data, shiny_new_field=1)
    with pytest.warns(_model.SchemaWarning, match="SeedView has no field 'shiny_new_field'"):
        view = crabnet.SeedView._from_fields(newer)
    assert view == crabnet.SeedView._from_fields(data)
    assert not hasattr(view, "shiny_new_field")
    # Warned once per class and field.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crabnet.SeedView._from_fields(newer)
