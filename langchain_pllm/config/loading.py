"""Reading a configuration: YAML text, a YAML file or a mapping in, a validated ``PllmConfig`` out.

``load_config`` reads the format of DESIGN.md section 3 (an ``llm:`` and an ``embedding:`` pool of
vendor sections, plus ``balancer:`` settings). YAML is parsed safely and refuses a key written
twice; ``${VAR}`` and ``${VAR:-default}`` are expanded from the environment after parsing, so a
variable's value can never add YAML structure. ``use:`` picks a pool's vendor sections; only
those are expanded and validated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from langchain_pllm.config.build import balancer_from_mapping, pool_from_built, provider_from_entry
from langchain_pllm.config.checks import join_path, show, suggest, vendor_choices
from langchain_pllm.config.models import PllmConfig, PoolConfig, ProviderConfig
from langchain_pllm.config.vendors import vendor_names, vendor_spec
from langchain_pllm.exceptions import PllmConfigError

__all__ = ["load_config"]

_TOP_LEVEL_KEYS = ("llm", "embedding", "balancer")
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LOOKS_LIKE_YAML_FLOW = re.compile(r"^\s*[\[{]")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with ``<<`` may be overridden; that is the point of them
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is written twice in one mapping", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _parse_yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        # Only PyYAML's problem and position: its str() quotes the line, which may hold a key.
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        context = getattr(exc, "context", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        detail = f"{context}, {problem}" if context else str(problem)
        raise PllmConfigError(
            f"YAML syntax error in {origin}{where}: {detail}; fix the YAML there "
            "(check indentation, colons and quoting)"
        ) from None


def _looks_like_path(text: str) -> bool:
    if "\n" in text or _LOOKS_LIKE_YAML_FLOW.match(text):
        return False
    stripped = text.strip()
    if stripped.lower().endswith((".yaml", ".yml")):
        return True
    has_separator = "/" in stripped or (os.sep in stripped) or ("\\" in stripped)
    return has_separator and ": " not in stripped


def _read_file(path: str) -> str:
    if not os.path.exists(path):
        raise PllmConfigError(
            f"config file not found: {path} (looked from {os.getcwd()}); check the path"
        )
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PllmConfigError(
            f"cannot read config file {path}: {reason}; check that it is a readable UTF-8 file"
        ) from None


def _read_source(source: str | os.PathLike[str] | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    if isinstance(source, os.PathLike):
        path = os.fspath(source)
        data = _parse_yaml(_read_file(path), path)
        origin = path
    elif isinstance(source, str):
        if "\n" not in source and os.path.isfile(source):
            data = _parse_yaml(_read_file(source), source)
            origin = source
        elif _looks_like_path(source):
            _read_file(source)  # raises: no such file
            raise AssertionError("unreachable")  # pragma: no cover
        else:
            data = _parse_yaml(source, "the YAML text")
            origin = "the YAML text"
    else:
        raise PllmConfigError(
            "the config source must be a file path, YAML text or a mapping, "
            f"got {type(source).__name__}"
        )
    if data is None:
        raise PllmConfigError(
            f"{origin} is empty; write an llm: or embedding: section (see DESIGN.md section 3)"
        )
    if not isinstance(data, Mapping):
        raise PllmConfigError(
            f"{origin} must be a mapping with llm:, embedding: and balancer: keys, got "
            f"{type(data).__name__}; if you meant a file path, that file does not exist"
        )
    return data


def _expand_env(text: str, place: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"  # ``$${`` writes a literal ``${``
        variable, default = match.group(1), match.group(2)
        value = os.environ.get(variable)
        if value:
            return value
        if default is not None:
            return default
        if value == "":
            return ""
        what = "key" if place.endswith("api_key") else "value"
        raise PllmConfigError(
            f"environment variable {variable} is not set; set {variable} in the environment "
            f"or write the {what} in place of ${{{variable}}} (or ${{{variable}:-default}})",
            field=place,
        )

    if "$" not in text:
        return text
    if "${" in _ENV_REF.sub("", text):
        # The text may be a key: say what is wrong without quoting it.
        raise PllmConfigError(
            "malformed ${...} reference; write ${NAME} or ${NAME:-default}, "
            "or $${ for a literal ${",
            field=place,
        )
    return _ENV_REF.sub(replace, text)


def _interpolate(value: Any, place: str) -> Any:
    """Expand ``${VAR}`` in every string inside ``value``, returning new containers.

    Runs on parsed YAML, so a variable's value can never add YAML structure.
    """
    if isinstance(value, str):
        return _expand_env(value, place)
    if isinstance(value, Mapping):
        return {
            key: _interpolate(item, join_path(place, [str(key)])) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(item, f"{place}[{index}]") for index, item in enumerate(value)]
    return value


def _unknown_key_error(key: Any, choices: Sequence[str], place: str, what: str) -> PllmConfigError:
    shown = str(key)
    return PllmConfigError(
        f"unknown {what} '{shown}'; {suggest(shown, choices)}expected one of: {', '.join(choices)}",
        field=join_path(place, [shown]),
    )


def _parse_use(raw: Any, place: str) -> list[str]:
    how = 'write use: "openai, anthropic" or a YAML list of vendor names'
    if isinstance(raw, str):
        names = [part.strip() for part in raw.split(",")]
    elif isinstance(raw, list) and all(isinstance(part, str) for part in raw):
        names = [part.strip() for part in raw]
    else:
        raise PllmConfigError(
            f"use must be a comma-separated string or a list of vendor names, got "
            f"{type(raw).__name__}; {how}",
            field=place,
        )
    chosen: list[str] = []
    for name in names:
        if not name or name in chosen:
            continue
        if vendor_spec(name) is None:
            raise PllmConfigError(
                f"use names unknown vendor {name!r}; {suggest(name, vendor_names())}"
                f"vendors: {vendor_choices()}",
                field=place,
            )
        chosen.append(name)
    if not chosen:
        raise PllmConfigError(f"use names no vendor; {how}", field=place)
    return chosen


def _pool_from_section(section: Any, place: str) -> PoolConfig:
    example = f"{place}:\n  openai:\n    - api_key: ${{OPENAI_API_KEY}}\n      model: gpt-4o-mini"
    if not isinstance(section, Mapping):
        shown = "empty" if section is None else f"a {type(section).__name__}"
        raise PllmConfigError(
            f"{place} must be a mapping of vendor sections, but it is {shown}; "
            f"write e.g.\n{example}",
            field=place,
        )
    for key in section:
        if key != "use" and (not isinstance(key, str) or vendor_spec(key) is None):
            raise _unknown_key_error(key, ("use", *vendor_names()), place, "vendor section")
    if "use" in section:
        use_place = f"{place}.use"
        vendors = _parse_use(_interpolate(section["use"], use_place), use_place)
        for vendor in vendors:
            if vendor not in section:
                raise PllmConfigError(
                    f"use names {vendor!r} but there is no {place}.{vendor} section; "
                    f"add one or remove {vendor!r} from use",
                    field=use_place,
                )
    else:
        vendors = [key for key in section if key != "use"]
    if not vendors:
        raise PllmConfigError(
            f"{place} has no vendor sections, so the pool is empty; write e.g.\n{example}",
            field=place,
        )

    built: list[tuple[str, ProviderConfig]] = []
    for vendor in vendors:
        vendor_place = f"{place}.{vendor}"
        raw = section[vendor]
        if isinstance(raw, Mapping):
            entries, places = [raw], [vendor_place]
        elif isinstance(raw, list):
            entries = raw
            places = [f"{vendor_place}[{index}]" for index in range(len(raw))]
        else:
            shown = "empty" if raw is None else f"a {type(raw).__name__}"
            raise PllmConfigError(
                f"{vendor_place} must be a list of providers (or one mapping), but it is {shown}; "
                "give each provider api_key and model",
                field=vendor_place,
            )
        if not entries:
            raise PllmConfigError(
                f"{vendor_place} lists no providers; add one or remove {vendor!r} from use",
                field=vendor_place,
            )
        for index, (entry, entry_place) in enumerate(zip(entries, places, strict=True)):
            if not isinstance(entry, Mapping):
                raise PllmConfigError(
                    f"each provider must be a mapping with api_key and model, got "
                    f"{type(entry).__name__}",
                    field=entry_place,
                )
            expanded = _interpolate(entry, entry_place)
            if "vendor" in expanded and expanded["vendor"] != vendor:
                raise PllmConfigError(
                    f"vendor {show(expanded['vendor'])} contradicts its section {vendor!r}; "
                    "remove vendor: (the section names it) or move the entry",
                    field=f"{entry_place}.vendor",
                )
            built.append(
                (
                    entry_place,
                    provider_from_entry(expanded, vendor=vendor, index=index, place=entry_place),
                )
            )
    return pool_from_built(built, place)


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> PllmConfig:
    """Read and validate a configuration.

    ``${VAR}`` and ``${VAR:-default}`` in any string are read from the environment (after the
    YAML is parsed, so a variable's value is always plain text); ``$${`` writes a literal ``${``.
    Only the vendor sections a pool uses are expanded and validated.

    Args:
        source: A path to a YAML file, YAML text, or an already parsed mapping.

    Returns:
        The validated configuration.

    Raises:
        PllmConfigError: For a missing or unreadable file, bad YAML, an unset variable, an
            unknown key or vendor, or a missing or bad value; ``field`` names where.

    Example:
        .. code-block:: python

            config = load_config("pllm.yaml")
            config.llm.providers[0].id  # "openai-0"
    """
    data = _read_source(source)
    for key in data:
        if key not in _TOP_LEVEL_KEYS:
            raise _unknown_key_error(key, _TOP_LEVEL_KEYS, "", "top-level key")
    if "llm" not in data and "embedding" not in data:
        raise PllmConfigError(
            "the config has neither an llm: nor an embedding: section; add at least one"
        )
    llm = _pool_from_section(data["llm"], "llm") if "llm" in data else None
    embedding = _pool_from_section(data["embedding"], "embedding") if "embedding" in data else None
    balancer = balancer_from_mapping(_interpolate(data.get("balancer"), "balancer"))
    return PllmConfig(llm=llm, embedding=embedding, balancer=balancer)
