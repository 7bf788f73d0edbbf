"""The ``TIDAL_*`` overlay of the configuration, read by pydantic-settings.

``TIDAL_SERVING__PORT=9000`` sets ``serving.port``: the prefix ``TIDAL_``, then the key's path
with ``__`` between levels, in any case. pydantic-settings' ``EnvSettingsSource`` finds the
variables of each section of the model it is given and nests them; this module gives it a
mapping instead of the process's environment (so tests and callers can pass one) and reads
lists and mappings as YAML (JSON is YAML), as ``tidal.yaml`` is read. Scalars stay strings for
the model to convert (``"9000"`` becomes an int where an int is wanted; a secret like
``"12345678"`` stays a string), an empty value means null, and unknown keys are kept so that
validation names them. ``tidal.config.load_config`` merges the result over ``tidal.yaml``.

Imported only when a variable names a section: pydantic-settings costs 0.1–0.3 s to import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource, SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from tidal.config import SECRET_KEYS
from tidal.errors import ConfigError

PREFIX = "TIDAL_"
DELIMITER = "__"


class _Variables(EnvSettingsSource):
    """``EnvSettingsSource`` over a given mapping, with YAML for lists and mappings."""

    def __init__(self, model: type[BaseModel], variables: Mapping[str, str]) -> None:
        self.variables = dict(variables)
        # it reads only the model's fields and config: a plain pydantic model will do
        super().__init__(
            model,  # type: ignore[arg-type]
            case_sensitive=False,
            env_prefix=PREFIX,
            env_nested_delimiter=DELIMITER,
            env_parse_none_str="",  # TIDAL_STORAGE__ENDPOINT_URL= clears the file's value
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self.variables, False, False, "")

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as exc:
            name = next(
                (n for n in self.variables if n.lower().endswith(field_name.lower())),
                f"{PREFIX}…{field_name.upper()}",
            )
            why = "(value hidden)" if field_name.lower() in SECRET_KEYS else str(exc)
            raise ConfigError(
                f"{name} is not a valid list or mapping: {why}",
                hint="write it as JSON or YAML flow style, e.g. '[\"a\", \"b\"]' or '{a: 1}'",
            ) from exc


def read_environ(model: type[BaseModel], variables: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``variables`` hold for ``model``'s sections, nested as in ``tidal.yaml``."""
    try:
        return _Variables(model, variables)()
    except SettingsError as exc:  # a value pydantic-settings could not read
        cause = exc.__cause__ or exc
        raise ConfigError(
            f"a TIDAL_* variable could not be read: {cause}",
            hint="see 'tidal init --print-config' for the keys and their types",
        ) from exc
