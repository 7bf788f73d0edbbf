"""Configuration: defaults < tidal.yaml < TIDAL_* variables < overrides; errors name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.config import CONFIG_FILE, Config, load_config, render_yaml
from tidal.errors import ConfigError

NO_ENV: dict[str, str] = {}


def write(folder: Path, text: str) -> Path:
    path = folder / CONFIG_FILE
    path.write_text(text, encoding="utf-8")
    return path


def key_paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """Every key of a nested mapping as a dotted path (sections and leaves)."""
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict) and key != "params":  # params is a free-form leaf
            paths |= key_paths(value, path + ".")
    return paths


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ=NO_ENV)

    assert config == Config()
    assert config.project == "tidal" and config.model_name == "tidal"
    assert config.serving.port == 8080 and config.serving.host == "127.0.0.1"
    assert config.gate.min_accuracy == 0.7 and config.gate.tolerance == 0.01
    assert config.controller.lease_s == 30.0 and config.data.label_column == "label"
    assert config.storage.key is None


def test_yaml_overrides_defaults_and_keeps_the_rest(tmp_path: Path) -> None:
    write(
        tmp_path,
        "project: churn\n"
        "registry: {model_name: churn-model}\n"
        "gate:\n  min_accuracy: 0.9\n"
        "training: {params: {model: logistic_regression, C: 0.5}}\n",
    )

    config = load_config(tmp_path, environ=NO_ENV)

    assert config.project == "churn" and config.model_name == "churn-model"
    assert config.gate.min_accuracy == 0.9
    assert config.gate.min_macro_f1 == 0.6  # untouched keys of a section keep their default
    assert config.training.params == {"model": "logistic_regression", "C": 0.5}


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    write(tmp_path, "# nothing yet\n")

    assert load_config(tmp_path, environ=NO_ENV) == Config()


def test_environment_beats_yaml_and_overrides_beat_both(tmp_path: Path) -> None:
    write(tmp_path, "serving:\n  port: 9000\n  host: 0.0.0.0\n")
    env = {
        "TIDAL_SERVING__PORT": "9001",
        "TIDAL_CONTROLLER__POLL_INTERVAL_S": "0.2",
        "TIDAL_WORKSPACE": "/somewhere",  # names the workspace, not a key
        "OTHER_SERVING__PORT": "1",
    }

    config = load_config(tmp_path, environ=env)
    overridden = load_config(tmp_path, environ=env, overrides={"serving": {"port": 9002}})

    assert config.serving.port == 9001
    assert config.serving.host == "0.0.0.0"  # from the yaml, not reset by the variable
    assert config.controller.poll_interval_s == 0.2
    assert overridden.serving.port == 9002


def test_the_real_environment_is_read_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "serving: {port: 9000}\n")
    monkeypatch.setenv("TIDAL_SERVING__PORT", "9005")

    assert load_config(tmp_path).serving.port == 9005


def test_an_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "serving:\n  prot: 9000\n")

    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ=NO_ENV)

    message = str(info.value)
    assert "serving.prot: unknown key" in message
    assert str(path) in message and "tidal init --print-config" in message
    assert info.value.exit_code == 2


def test_an_unknown_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gate\.min_acc: unknown key"):
        load_config(tmp_path, environ={"TIDAL_GATE__MIN_ACC": "0.5"})


def test_variables_carry_lists_mappings_nulls_and_any_case(tmp_path: Path) -> None:
    write(tmp_path, "storage:\n  endpoint_url: http://127.0.0.1:8333\n")
    env = {
        "TIDAL_STORAGE__ENDPOINT_URL": "",  # empty: null, clearing the file's value
        "TIDAL_TRAINING__PARAMS": "{epochs: 2, learning_rate: 0.001}",  # YAML flow style
        "TIDAL_SERVING__API_KEYS": '["aa", "bb"]',  # JSON
        "TIDAL_ALERTS__SECRET": "12345678",  # digits, still a string
        "tidal_serving__port": "9003",
    }

    config = load_config(tmp_path, environ=env)

    assert config.storage.endpoint_url is None
    assert config.training.params == {"epochs": 2, "learning_rate": 0.001}
    assert [str(k) for k in config.serving.api_keys] == ["aa", "bb"]
    assert config.alerts.secret is not None and config.alerts.secret.get_secret_value() == (
        "12345678"
    )
    assert config.serving.port == 9003


def test_a_variable_that_is_not_a_list_is_named_and_a_secret_is_not_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad_params:
        load_config(tmp_path, environ={"TIDAL_TRAINING__PARAMS": "{epochs: [2"})
    with pytest.raises(ConfigError) as bad_keys:
        load_config(tmp_path, environ={"TIDAL_SERVING__API_KEYS": "[s3cr3t-key"})

    assert "TIDAL_TRAINING__PARAMS is not a valid list or mapping" in bad_params.value.message
    assert bad_keys.value.message == (
        "TIDAL_SERVING__API_KEYS is not a valid list or mapping: (value hidden)"
    )
    assert "s3cr3t" not in str(bad_keys.value)


def test_without_a_setting_variable_pydantic_settings_is_not_imported(tmp_path: Path) -> None:
    import subprocess
    import sys

    write(tmp_path, "serving: {port: 9000}\n")
    code = (
        "import sys; from pathlib import Path; from tidal.config import load_config; "
        f"load_config(Path({str(tmp_path)!r}), environ={{'TIDAL_WORKSPACE': '/x'}}); "
        "print('pydantic_settings' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert found.stdout.strip() == "False", found.stderr


def test_an_out_of_range_value_says_what_was_given(tmp_path: Path) -> None:
    write(tmp_path, "gate: {min_accuracy: 1.5}\n")

    with pytest.raises(ConfigError, match=r"gate\.min_accuracy: .*less than or equal to 1.*1\.5"):
        load_config(tmp_path, environ=NO_ENV)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("serving:\n  port: [9000\n", "is not valid YAML"),
        ("serving:\n\tport: 1\n", "is not valid YAML"),
        ("- a list\n- not a mapping\n", "must hold a mapping of sections, not list"),
    ],
)
def test_invalid_yaml_is_a_config_error(tmp_path: Path, text: str, match: str) -> None:
    write(tmp_path, text)

    with pytest.raises(ConfigError, match=match) as info:
        load_config(tmp_path, environ=NO_ENV)

    assert CONFIG_FILE in str(info.value)


def test_render_yaml_parses_back_to_the_same_config_with_every_key() -> None:
    config = Config.model_validate(
        {
            "project": "house-prices",
            "data": {"label_column": "price", "feature_columns": ["size", "rooms"]},
            "training": {"params": {"model": "random_forest", "n_estimators": 50}},
            "serving": {"port": 9100, "api_keys": ["ab" * 32]},
            "gate": {"tolerance": 0.05},
        }
    )

    text = render_yaml(config)
    parsed = yaml.safe_load(text)

    assert Config.model_validate(parsed) == config
    assert key_paths(parsed) == key_paths(config.model_dump())
    assert "storage.key" in key_paths(parsed) and "controller.max_attempts" in key_paths(parsed)
    for field in Config.model_fields["gate"].annotation.model_fields.values():  # type: ignore[union-attr]
        assert f"# {field.description}" in text  # each key explained


def test_rendered_defaults_load_back_through_load_config(tmp_path: Path) -> None:
    write(tmp_path, render_yaml(Config()))

    assert load_config(tmp_path, environ=NO_ENV) == Config()


def test_secrets_are_never_rendered_and_masked_in_reprs(tmp_path: Path) -> None:
    key, secret = "AKIAEXAMPLEKEY123", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    write(tmp_path, f"storage:\n  uri: s3://bucket/p\n  key: {key}\n  secret: {secret}\n")

    config = load_config(tmp_path, environ=NO_ENV)
    rendered = render_yaml(config)

    assert config.storage.key is not None and config.storage.key.get_secret_value() == key
    assert config.storage.secret is not None
    for text in (repr(config), str(config), repr(config.storage), rendered):
        assert key not in text and secret not in text
    assert "**********" in repr(config.storage)
    parsed = yaml.safe_load(rendered)
    assert parsed["storage"] == {
        "uri": "s3://bucket/p",
        "endpoint_url": None,
        "key": None,
        "secret": None,
        "region": None,
    }
