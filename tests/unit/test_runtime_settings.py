"""Settings come from TIDINGS_* variables; a bad value is refused naming the variable."""

from __future__ import annotations

import os
import re

import pytest

from tidings import ConfigurationError, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TIDINGS_"):
            monkeypatch.delenv(name)


def refusal(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env()
    return str(caught.value)


def names_variable(message: str, name: str) -> bool:
    return re.search(rf"\b{name}\b", message) is not None


def test_values_are_read_from_tidings_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_NAMESPACE", "orders-eu")
    monkeypatch.setenv("TIDINGS_BATCH_SIZE", "250")
    monkeypatch.setenv("TIDINGS_LANE_WEIGHTS", "[5, 2, 1]")
    settings = Settings.from_env()
    assert (settings.namespace, settings.batch_size, settings.lane_weights) == (
        "orders-eu", 250, (5, 2, 1)
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TIDINGS_BATCH_SIZE", "0"),
        ("TIDINGS_BATCH_SIZE", "lots"),
        ("TIDINGS_BLOCK_MS", "-5"),
        ("TIDINGS_PARTITIONS", "5000"),
        ("TIDINGS_CLAIM_IDLE_MS", "10"),
        ("TIDINGS_LEASE_TTL_MS", "1.5"),
        ("TIDINGS_MAX_DELIVERIES", "0"),
        ("TIDINGS_SHUTDOWN_TIMEOUT_S", "0"),
        ("TIDINGS_CONNECT_TIMEOUT", "soon"),
        ("TIDINGS_NAMESPACE", "has space"),
        ("TIDINGS_NAMESPACE", "brace{d}"),
        ("TIDINGS_DATABASE_SCHEMA", "drop;table"),
        ("TIDINGS_DATABASE_SCHEMA", "s" * 64),  # PostgreSQL would cut it to 63, silently
        ("TIDINGS_LANE_WEIGHTS", "[6, 3, 0]"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = refusal(monkeypatch, name, value)
    assert message.startswith("invalid settings: ")
    assert names_variable(message, name), message


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_BLOCK_MS", "0")
    message = refusal(monkeypatch, "TIDINGS_BATCH_SIZE", "0")
    assert names_variable(message, "TIDINGS_BATCH_SIZE")
    assert names_variable(message, "TIDINGS_BLOCK_MS")


def test_a_lane_weight_of_zero_is_refused_because_the_lane_could_starve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "starve" in refusal(monkeypatch, "TIDINGS_LANE_WEIGHTS", "[6, 3, 0]")


@pytest.mark.parametrize("value", ['[6, "x", 1]', "[6, 3]"])
def test_a_bad_item_of_a_list_variable_names_the_variable_itself(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    message = refusal(monkeypatch, "TIDINGS_LANE_WEIGHTS", value)
    assert names_variable(message, "TIDINGS_LANE_WEIGHTS"), message


def test_a_list_variable_that_is_not_json_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = refusal(monkeypatch, "TIDINGS_LANE_WEIGHTS", "6,3,1")
    assert names_variable(message, "TIDINGS_LANE_WEIGHTS"), message
