"""The README's variable table and the settings object agree: names and defaults."""

from __future__ import annotations

import json
import re

from service.config import Settings
from tests.conftest import REPO

# Read by other programs than the api's settings: the Makefile / CLI and the training package.
NOT_SETTINGS = {"HOST", "PORT"}


def readme_variables() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([A-Z_]+)`[^|]*\| `([^`]*)`", section, flags=re.M))


def settings_variables() -> dict[str, str]:
    names = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = alias.choices[0] if alias is not None else f"FORECAST_{name.upper()}"  # type: ignore[union-attr]
        default = field.default
        if default is None:
            names[str(env)] = "unset"
        else:
            names[str(env)] = (
                json.dumps(default) if isinstance(default, dict | list) else str(default)
            )
    return names


def test_readme_table_lists_every_setting_with_its_default():
    documented = readme_variables()
    actual = settings_variables()
    assert set(documented) - NOT_SETTINGS == set(actual)
    for env, default in actual.items():
        assert documented[env] == default, (
            f"{env}: README says {documented[env]!r}, code {default!r}"
        )
