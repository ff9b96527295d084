"""Loading and validating configuration: defaults < YAML file < JOBPIPE_<SECTION>_<KEY> environment.

Every value keeps where it came from (default, file:line, env) for `jobpipe config show`.
Mistakes are ConfigError with one line naming the key, the file and the line.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jobpipe.errors import ConfigError
from jobpipe.logs import redact as redact_text
from jobpipe.sections import SECTION_TYPES, Sections
from jobpipe.settings import SECTIONS, Setting, all_settings

DEFAULT_PATH = Path("/etc/jobpipe/jobpipe.yaml")
ENV_PREFIX = "JOBPIPE_"
# Environment variables with this prefix that are not settings.
_RESERVED_ENV = {"JOBPIPE_CONFIG", "JOBPIPE_DAEMON", "JOBPIPE_INSTANCE"}


@dataclass(frozen=True, slots=True)
class Value:
    value: Any
    source: str  # "default", "<file>:<line>" or "env JOBPIPE_X_Y"


class Config(Sections):
    """Effective configuration. Attribute access by section: `cfg.embedder.workers`, each section a
    frozen dataclass of jobpipe.sections (a misspelt setting is a type error, assigning one
    raises FrozenInstanceError)."""

    def __init__(self, values: Mapping[str, Value], path: Path | None = None) -> None:
        self._values = dict(values)
        self.path = path
        sections: dict[str, dict[str, Any]] = {}
        for key, v in self._values.items():
            sec, name = key.split(".", 1)
            sections.setdefault(sec, {})[name] = v.value
        for sec, kv in sections.items():
            setattr(self, sec, SECTION_TYPES[sec](**kv))

    def get(self, key: str) -> Any:
        return self._values[key].value

    def source(self, key: str) -> str:
        return self._values[key].source

    def items(self) -> list[tuple[str, Value]]:
        return list(self._values.items())

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with `section__key=value` overrides (validated), for tests and tools."""
        values = dict(self._values)
        registry = all_settings()
        for dunder, raw in overrides.items():
            key = dunder.replace("__", ".", 1)
            if key not in registry:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = Value(check_value(registry[key], raw, "override"), "override")
        return Config(values, self.path)

    def redacted(self, key: str) -> Any:
        return redact(all_settings()[key], self._values[key].value)


def redact(setting: Setting, value: Any) -> Any:
    """`value` as `config show` may print it: a secret setting as "***" (a URL keeps its host, only
    its credentials go), and credentials in any string, also inside lists and mappings, redacted
    with jobpipe.logs.redact."""
    if setting.secret and value not in ("", [], None):
        if isinstance(value, str) and "://" in value:
            return redact_text(value)
        return "***"
    return _redact_nested(value)


def _redact_nested(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [_redact_nested(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_nested(v) for k, v in value.items()}
    return value


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {str: "a string", int: "an integer", bool: "true/false", list: "a list", dict: "a mapping"}.get(
        t, t.__name__
    )


# Caps on what a config file or variable may hold: no setting needs more, and a value beyond
# them is a mistake (or an attack) that should be one line, not memory or a RecursionError.
MAX_CONFIG_BYTES = 1 << 20
MAX_VALUE_DEPTH = 8  # fetcher.sources is a list of mappings of scalars: depth 3
MAX_VALUE_ITEMS = 10_000
MAX_STRING_CHARS = 10_000


def _shown(value: Any) -> str:
    """A value for an error message: its repr, cut (a 1 MB string is no message)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_shape(setting: Setting, value: Any, where: str) -> None:
    """Nesting, item count and string length within the caps (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    items = 0
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str) and len(v) > MAX_STRING_CHARS:
            raise ConfigError(f"{where}: {setting.key}: a string longer than {MAX_STRING_CHARS} characters")
        if isinstance(v, dict | list):
            if depth > MAX_VALUE_DEPTH:
                raise ConfigError(f"{where}: {setting.key} is nested deeper than {MAX_VALUE_DEPTH} levels")
            children = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
            items += len(children)
            if items > MAX_VALUE_ITEMS:
                raise ConfigError(f"{where}: {setting.key} holds more than {MAX_VALUE_ITEMS} items")
            stack.extend((c, depth + 1) for c in children)


def check_value(setting: Setting, value: Any, where: str) -> Any:
    """Type/range/choice check; returns the value (ints widened to float for float settings).
    Lists and mappings are also held to the caps on nesting, items and string length."""
    expected = setting.value_type
    ok = isinstance(value, expected)
    if ok and isinstance(value, bool) and expected in ((float, int), int):
        ok = False  # YAML `true` is not a number
    if not ok:
        got = f"{type(value).__name__} {_shown(value)}"
        raise ConfigError(f"{where}: {setting.key} must be {_type_name(expected)}, got {got}")
    _check_shape(setting, value, where)
    if isinstance(value, float) and value != value:
        raise ConfigError(f"{where}: {setting.key} is not a number (nan)")
    if isinstance(value, int) and not isinstance(value, bool) and expected == (float, int):
        if abs(value) > 1e300:  # float() would raise OverflowError; no setting comes near
            raise ConfigError(f"{where}: {setting.key} = {_shown(value)} is out of range")
        value = float(value)
    if setting.item_type is not None and isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, setting.item_type):
                raise ConfigError(
                    f"{where}: {setting.key}[{i}] must be {_type_name(setting.item_type)}, got {_shown(item)}"
                )
    if setting.min is not None and value < setting.min:
        raise ConfigError(f"{where}: {setting.key} = {value} is below the minimum {setting.min:g}")
    if setting.max is not None and value > setting.max:
        raise ConfigError(f"{where}: {setting.key} = {value} is above the maximum {setting.max:g}")
    if setting.choices is not None and value not in setting.choices:
        choices = ", ".join(repr(c) for c in setting.choices)
        raise ConfigError(f"{where}: {setting.key} = {_shown(value)} is not one of {choices}")
    return value


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse the file; return data and the 1-based line of each `section` and `section.key`."""
    try:
        with path.open("rb") as fh:  # bounded: /dev/zero or a runaway file is no config
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: config file larger than {MAX_CONFIG_BYTES} bytes")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (set JOBPIPE_CONFIG or create it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:1: the config file must be a mapping of sections")
    lines: dict[str, int] = {}
    for knode, vnode in node.value:
        sec = knode.value
        lines[sec] = knode.start_mark.line + 1
        if isinstance(vnode, yaml.MappingNode):
            for k2, _ in vnode.value:
                lines[f"{sec}.{k2.value}"] = k2.start_mark.line + 1
    return data, lines


def load(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the effective configuration.

    `path` None: $JOBPIPE_CONFIG, else /etc/jobpipe/jobpipe.yaml if it exists, else defaults only.
    """
    env = os.environ if environ is None else environ
    registry = all_settings()
    # A copy: a frozen section's list or dict can still be changed in place, and the registry's
    # default must not change with it for every later load in the process.
    values: dict[str, Value] = {k: Value(copy.deepcopy(s.default), "default") for k, s in registry.items()}
    file_path: Path | None = None
    if path is not None:
        file_path = Path(path)
    elif env.get("JOBPIPE_CONFIG"):
        file_path = Path(env["JOBPIPE_CONFIG"])
    elif DEFAULT_PATH.exists():
        file_path = DEFAULT_PATH

    if file_path is not None:
        data, lines = _read_yaml(file_path)
        section_names = [s.name for s in SECTIONS]
        for sec, body in data.items():
            where = f"{file_path}:{lines.get(str(sec), 1)}"
            if sec not in section_names:
                raise ConfigError(f"{where}: unknown section {sec!r}{_suggest(str(sec), section_names)}")
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ConfigError(f"{where}: section {sec!r} must be a mapping of settings")
            names = [s.name for s in next(x for x in SECTIONS if x.name == sec).settings]
            for name, raw in body.items():
                key = f"{sec}.{name}"
                where = f"{file_path}:{lines.get(key, lines.get(str(sec), 1))}"
                if key not in registry:
                    raise ConfigError(f"{where}: unknown setting {key!r}{_suggest(str(name), names)}")
                values[key] = Value(check_value(registry[key], raw, where), where)

    env_keys = {"JOBPIPE_" + k.replace(".", "_").upper(): k for k in registry}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var in _RESERVED_ENV:
            continue
        env_key = env_keys.get(var)
        if env_key is None:
            raise ConfigError(f"environment: unknown setting {var}{_suggest(var, list(env_keys))}")
        setting = registry[env_key]
        parsed: Any = raw
        if setting.value_type is not str:
            try:
                if len(raw) > MAX_STRING_CHARS:
                    raise ConfigError(f"env {var}: longer than {MAX_STRING_CHARS} characters")
                parsed = yaml.safe_load(raw) if raw.strip() else raw
            except (yaml.YAMLError, RecursionError):
                raise ConfigError(
                    f"env {var}: cannot parse {_shown(raw)} as {_type_name(setting.value_type)}"
                ) from None
        values[env_key] = Value(check_value(setting, parsed, f"env {var}"), f"env {var}")

    return Config(values, file_path)


def render_defaults() -> str:
    """The documented config file: every section and setting with its default and comment."""
    out = [
        "# jobpipe configuration: every tunable with its default.",
        "# Loaded from $JOBPIPE_CONFIG, else /etc/jobpipe/jobpipe.yaml; JOBPIPE_<SECTION>_<KEY>",
        "# environment variables override single values (e.g. JOBPIPE_EMBEDDER_WORKERS=8).",
        "# Generated by `jobpipe config defaults`; edit values, keep the keys.",
    ]
    for sec in SECTIONS:
        out += ["", f"# {sec.help}", f"{sec.name}:"]
        for s in sec.settings:
            rng = ""
            if s.min is not None or s.max is not None:
                rng = f" [{s.min:g}..{s.max:g}]" if s.min is not None and s.max is not None else ""
            if s.choices:
                rng = " [" + "|".join(str(c) or '""' for c in s.choices) + "]"
            out.append(f"  # {s.help}{rng}{' (secret)' if s.secret else ''}")
            dumped = yaml.safe_dump(
                {s.name: s.default}, default_flow_style=True, allow_unicode=True, sort_keys=False, width=1000
            ).strip()
            # safe_dump wraps a flow mapping in braces: `{name: value}`
            out.append("  " + dumped[1:-1])
    return "\n".join(out) + "\n"
