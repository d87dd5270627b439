"""Reading one service file: YAML in, a validated Service out, or one error naming file, line and field.

The operator fixes a catalog from the error alone, so each problem points at the line that holds
the field (PyYAML keeps a mark on every node) and says what is wrong in the catalog's own terms,
never in pydantic's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .models import CatalogConfigError, Service

#: A field's place in the file: the path of keys (and list indexes) from the top mapping.
FieldPath = tuple[str | int, ...]


def load_service(path: Path) -> Service:
    """One service file, or a CatalogConfigError naming the file, the line and the field."""
    document, lines = _read_yaml(path)
    if not isinstance(document, dict):
        raise CatalogConfigError(f"{path}: line 1: must be a mapping of keys (name, image, sizes, ...)")
    try:
        service = Service.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(_describe(problem, lines) for problem in error.errors())
        raise CatalogConfigError(f"{path}: {problems}") from None
    if service.name != path.stem:
        raise CatalogConfigError(
            f"{path}: line {_line_of(('name',), lines)}: name: {service.name!r} must match the file name {path.stem!r}"
        )
    return service


def _read_yaml(path: Path) -> tuple[Any, dict[FieldPath, int]]:
    """The file's data and the 1-based line of every key in it, from a single parse."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogConfigError(f"{path}: cannot be read: {error}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        document = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise CatalogConfigError(f"{path}: {where}not valid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise CatalogConfigError(f"{path}: not valid YAML: {error}") from None
    finally:
        loader.dispose()
    return document, (_key_lines(node) if node is not None else {})


def _key_lines(node: yaml.Node, path: FieldPath = ()) -> dict[FieldPath, int]:
    """Where each key (or list item) starts; a key's own line, not its value's, names the field."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            lines.update(_key_lines(value, child))
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_key_lines(item, (*path, index)))
    return lines


def _line_of(location: FieldPath, lines: Mapping[FieldPath, int]) -> int:
    """The line of `location`, or of its nearest parent in the file (a missing key: its mapping)."""
    for end in range(len(location), -1, -1):
        line = lines.get(location[:end])
        if line is not None:
            return line
    return 1


def _describe(problem: Mapping[str, Any], lines: Mapping[FieldPath, int]) -> str:
    """One pydantic error as an operator reads it: the line, the dotted field, then what is wrong."""
    loc = tuple(problem["loc"])
    # A whole-mapping check (e.g. default_size against sizes) names its fields in its message.
    where = f"line {_line_of(loc, lines)}: " + (".".join(str(part) for part in loc) + ": " if loc else "")
    kind = problem["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else "none"
        return f"{where}unknown key {loc[-1]!r} (allowed here: {allowed})"
    if kind == "missing":
        return f"{where}required key is missing"
    message = problem["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{where}{message}"
    return f"{where}{message} (got {show(problem.get('input'))})"


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The schema model a YAML mapping at `path` is checked against, to list its allowed keys."""
    current: Any = Service
    for part in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = field.annotation if field else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def show(value: Any, limit: int = 40) -> str:
    """A value, quoted and cut short, safe to echo in an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
