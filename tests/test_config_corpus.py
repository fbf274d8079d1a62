"""The configuration corpus (`tests/corpus/config/`): every key in every reader given wrong types, numbers that are not
finite or out of range, empty and blank entries and weak values, each refused at start-up with the setting named;
and the odd-looking values that are accepted, each with its documented meaning."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mcp_access_guard import AccessConfig, ConfigError, GuardConfig
from mcp_access_guard.settings import LimitSettings

CORPUS = Path(__file__).parent / "corpus" / "config"
AUD = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2"
BASE_ENV = {"TEAM_DOMAIN": "myteam", "POLICY_AUD": AUD}
# A token that no message may echo: it stands for a secret given in a value that is refused.
SECRET_MARK = "secret"


@dataclass(frozen=True)
class Refusal:
    reader: str  # toml | env | code
    key: str  # the TOML path, the variable, or the argument
    value: str
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.reader}:{self.key}={self.value!r}"


def _corpus() -> dict[str, Any]:
    with open(CORPUS / "keys.toml", "rb") as file:
        return tomllib.load(file)


def refusals() -> Iterator[Refusal]:
    corpus = _corpus()
    for key in corpus["key"]:
        kind = corpus["kinds"][key["kind"]]
        good = set(key.get("good", ()))
        if "toml" in key:
            for value in [*kind["toml"], *key.get("bad", ())]:
                if value not in good:
                    yield Refusal("toml", key["toml"], value)
        if "env" in key:
            for value in [*kind.get("env", ()), *key.get("bad_env", ())]:
                yield Refusal("env", key["env"], value, key.get("with_env", {}))
        if "code" in key:
            for value in [*kind.get("code", kind["toml"]), *key.get("bad", ())]:
                if value not in good:
                    yield Refusal("code", key["toml"].rpartition(".")[2], value)


def toml_value(snippet: str) -> Any:
    return tomllib.loads(f"value = {snippet}")["value"]


def toml_document(key: str, snippet: str) -> str:
    """A valid file with `key` set to `snippet`: the [access] table is there unless the key is in it."""
    tables: dict[str, dict[str, str]] = {"": {}, "access": {"team_domain": '"myteam"', "audiences": f'["{AUD}"]'}}
    table, _, name = key.rpartition(".")
    tables.setdefault(table, {})[name] = snippet
    lines = [f"{name} = {value}" for name, value in tables.pop("").items()]
    for table_name, values in tables.items():
        lines += [f"[{table_name}]", *(f"{name} = {value}" for name, value in values.items())]
    return "\n".join(lines) + "\n"


def read(case: Refusal, tmp_path: Path) -> None:
    """Read `case` the way its reader would at start-up."""
    if case.reader == "toml":
        path = tmp_path / "guard.toml"
        path.write_text(toml_document(case.key, case.value))
        GuardConfig.from_toml(path, environ={})
    elif case.reader == "env":
        GuardConfig.from_env({**BASE_ENV, **case.extra_env, case.key: case.value})
    elif case.key == "max_body_bytes":
        GuardConfig(access=AccessConfig("myteam", AUD), max_body_bytes=toml_value(case.value))
    elif case.key in LimitSettings.__dataclass_fields__:
        LimitSettings(**{case.key: toml_value(case.value)})
    else:
        arguments: dict[str, Any] = {"team_domain": "myteam", "audiences": AUD, case.key: toml_value(case.value)}
        AccessConfig(**arguments)


def refuse(case: Refusal, tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        read(case, tmp_path)
    return raised.value


@pytest.mark.parametrize("case", list(refusals()), ids=lambda case: case.id)
def test_every_bad_value_is_refused_with_its_setting_named(case: Refusal, tmp_path: Path) -> None:
    message = str(refuse(case, tmp_path))
    table, _, name = case.key.rpartition(".")
    if case.reader == "toml":
        assert "guard.toml" in message
        assert (f"[{table}] {name}" if table else name) in message, message
    else:
        assert case.key in message, message
    assert "\n" not in message
    if "secrets" in case.key or "SECRETS" in case.key or "client_credentials" in case.key:
        for word in ("tiny5", "long-enough-secret-value", "one-string-secret-value", "quoted-secret-value"):
            assert word not in message, f"a secret was echoed: {message}"


def test_the_corpus_covers_every_reader_and_is_large() -> None:
    cases = list(refusals())
    readers = {case.reader for case in cases}
    assert readers == {"toml", "env", "code"}
    assert len(cases) >= 250, len(cases)
    # Every key of examples/guard.toml is in the corpus.
    with open(Path(__file__).parent.parent / "examples" / "guard.toml", "rb") as file:
        example = tomllib.load(file)
    named = {case.key for case in cases if case.reader == "toml"}
    for table, values in example.items():
        for key in values if isinstance(values, dict) else [None]:
            if table == "tools" and key != "default":
                continue
            assert (f"{table}.{key}" if key else table) in named, (table, key)


def _accepted() -> list[dict[str, Any]]:
    with open(CORPUS / "cases.toml", "rb") as file:
        cases: list[dict[str, Any]] = tomllib.load(file)["case"]
    return cases


def _attribute(config: GuardConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    if value is None:
        return "none"
    if isinstance(value, tuple | frozenset):
        return sorted(value) if isinstance(value, frozenset) else list(value)
    return value


@pytest.mark.parametrize("case", _accepted(), ids=lambda case: case["name"])
def test_accepted_values_have_their_documented_meaning(case: dict[str, Any], tmp_path: Path) -> None:
    assert case["meaning"]
    env = {**({} if "toml" in case else BASE_ENV), **case.get("env", {})}
    path = None
    if "toml" in case:
        path = tmp_path / "guard.toml"
        path.write_text(case["toml"].replace("{aud}", AUD))
    config = GuardConfig.load(path, env)
    for attribute, expected in case["expect"].items():
        assert _attribute(config, attribute) == expected, attribute
