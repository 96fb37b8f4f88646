"""Check parsed JSON against a JSON Schema dict or a pydantic model, and say where it fails.

Both kinds of schema report their failures the same way, as ``$.path: problem`` items such as
``$.items[2].price: required property is missing``, at most five of them, so that a retry
prompt tells the model exactly which field to fix whichever kind the user passed. A JSON
Schema is itself checked once, when it is given, so a broken schema is the user's error at
construction rather than every answer's failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

__all__ = [
    "SchemaMismatch",
    "check_json_schema",
    "check_model",
    "is_pydantic_model",
    "json_path",
    "json_schema_checker",
]

_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_PROBLEMS_SHOWN = 5


class SchemaMismatch(ValueError):
    """A value does not satisfy its schema; the message lists where and why."""


def is_pydantic_model(schema: object) -> bool:
    """Whether ``schema`` is a pydantic model class (not an instance)."""
    return isinstance(schema, type) and issubclass(schema, BaseModel)


def json_schema_checker(schema: dict[str, Any]) -> Any:
    """A ``jsonschema`` validator for ``schema``, of the draft the schema declares.

    Args:
        schema: A JSON Schema dict.

    Returns:
        The validator object (``iter_errors`` is what ``check_json_schema`` uses).

    Raises:
        ValueError: ``schema`` is not a valid JSON Schema; the message gives the path.
    """
    # Imported here, not at the top: it costs tens of milliseconds and only a dict schema
    # needs it.
    import jsonschema
    from jsonschema.exceptions import SchemaError

    checker_class = jsonschema.validators.validator_for(schema)
    try:
        checker_class.check_schema(schema)
    except SchemaError as exc:
        path = json_path(exc.absolute_path)
        msg = f"schema: not a valid JSON Schema at {path}: {exc.message}. Fix the schema."
        raise ValueError(msg) from exc
    return checker_class(schema)


def check_json_schema(checker: Any, value: Any) -> Any:
    """Return ``value`` if it satisfies the schema of ``checker``.

    Args:
        checker: A validator from ``json_schema_checker``.
        value: Parsed JSON.

    Returns:
        ``value`` itself.

    Raises:
        SchemaMismatch: The problems, most relevant first.
    """
    from jsonschema.exceptions import relevance

    errors = sorted(checker.iter_errors(value), key=relevance)
    if errors:
        raise SchemaMismatch(_summarise([_describe_jsonschema_error(e) for e in errors]))
    return value


def check_model(model: type[BaseModel], value: Any) -> BaseModel:
    """Validate parsed JSON into an instance of a pydantic model.

    Args:
        model: The pydantic model class.
        value: Parsed JSON.

    Returns:
        The model instance.

    Raises:
        SchemaMismatch: The problems, in pydantic's order.
    """
    try:
        return model.model_validate(value)
    except PydanticValidationError as exc:
        problems = [_describe_pydantic_error(e) for e in exc.errors()]
        raise SchemaMismatch(_summarise(problems)) from exc


def json_path(parts: Iterable[str | int]) -> str:
    """Render a location as a JSONPath such as ``$.items[2].price``."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER_RE.fullmatch(part):
            path += f".{part}"
        else:
            path += f"[{json.dumps(part)}]"
    return path


def _describe_jsonschema_error(error: Any) -> str:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        if missing:
            return f"{json_path([*path, missing[0]])}: required property is missing"
    return f"{json_path(path)}: {error.message}"


def _describe_pydantic_error(error: Any) -> str:
    path = json_path(part for part in error["loc"] if isinstance(part, (str, int)))
    if error["type"] == "missing":
        return f"{path}: required property is missing"
    got = repr(error.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{path}: {error['msg']} (got {got})"


def _summarise(problems: list[str]) -> str:
    shown = "; ".join(problems[:_MAX_PROBLEMS_SHOWN])
    more = len(problems) - _MAX_PROBLEMS_SHOWN
    return shown + (f"; and {more} more problem(s)" if more > 0 else "")
