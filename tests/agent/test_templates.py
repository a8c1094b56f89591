"""The agent's allow-list: reading and checking the file, and checking a task's arguments."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from taskplatform.agent.templates import BASE_ENVIRONMENT, CommandTemplates, TemplateArgsError
from taskplatform.errors import ConfigError


def templates(*commands: dict[str, Any]) -> CommandTemplates:
    return CommandTemplates.from_data({"commands": list(commands)}, "test.json")


def one(placeholder: dict[str, Any], *, argv_item: str = "{value}") -> CommandTemplates:
    return templates({"name": "t", "argv": ["/bin/echo", argv_item], "placeholders": {"value": placeholder}})


def render(allow: CommandTemplates, value: Any) -> str:
    return allow.template("t").render({"value": value})[1]


# ---------------------------------------------------------------- loading
TOML = """
[[commands]]
name = "disk_usage"
argv = ["/usr/bin/du", "-s", "--", "{path}"]
cwd = "/tmp"
env = { TZ = "UTC" }
timeout_seconds = 30
max_output_bytes = 4096
kill_grace_seconds = 1
retryable_exit_codes = [75]

[commands.placeholders.path]
type = "path"
base = "/var/log"
"""


def test_a_toml_file_and_the_same_json_file_load_the_same_template(tmp_path: Path) -> None:
    toml_file = tmp_path / "commands.toml"
    toml_file.write_text(TOML)
    import tomllib

    json_file = tmp_path / "commands.json"
    json_file.write_text(json.dumps(tomllib.loads(TOML)))

    from_toml, from_json = CommandTemplates.load(toml_file), CommandTemplates.load(json_file)

    assert list(from_toml) == ["disk_usage"]
    assert from_toml["disk_usage"] == from_json["disk_usage"]
    template = from_toml["disk_usage"]
    assert (template.cwd, template.timeout_seconds, template.max_output_bytes) == ("/tmp", 30, 4096)
    assert template.kill_grace_seconds == 1 and template.retryable_exit_codes == [75]
    assert template.environment() == {**BASE_ENVIRONMENT, "TZ": "UTC"}
    assert template.render({"path": "syslog"}) == [
        "/usr/bin/du",
        "-s",
        "--",
        os.path.join(os.path.realpath("/var/log"), "syslog"),
    ]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ({"argv": ["/bin/echo"], "bogus": 1}, "template 'bad' (commands[0]) bogus: Extra inputs"),
        ({"argv": []}, "template 'bad' (commands[0]) argv: List should have at least 1 item"),
        (
            {"argv": ["/bin/echo", "{x}"]},
            "template 'bad' (commands[0]): argv: placeholder(s) ['x'] not declared",
        ),
        (
            {"argv": ["/bin/echo"], "placeholders": {"x": {"type": "str"}}},
            "template 'bad' (commands[0]): placeholders: ['x'] declared but not used in argv",
        ),
        (
            {"argv": ["{x}"], "placeholders": {"x": {"type": "str"}}},
            "template 'bad' (commands[0]): argv[0]: the program cannot be a placeholder",
        ),
        ({"argv": ["/bin/echo", "{"]}, "template 'bad' (commands[0]): argv[1] '{'"),
        (
            {"argv": ["/bin/echo", "{x!r}"], "placeholders": {"x": {"type": "str"}}},
            "argv[1] '{x!r}': a placeholder is '{name}'",
        ),
        (
            {"argv": ["/bin/echo", "{x}"], "placeholders": {"x": {"type": "str", "pattern": "("}}},
            "template 'bad' (commands[0]) placeholders.x.pattern: not a valid regular expression",
        ),
        (
            {"argv": ["/bin/echo", "{x}"], "placeholders": {"x": {"type": "int", "min": 5, "max": 1}}},
            "template 'bad' (commands[0]) placeholders.x: min (5) is above max (1)",
        ),
        (
            {"argv": ["/bin/echo", "{x}"], "placeholders": {"x": {"type": "enum", "choices": []}}},
            "template 'bad' (commands[0]) placeholders.x.choices: List should have at least 1 item",
        ),
        (
            {"argv": ["/bin/echo", "{x}"], "placeholders": {"x": {"type": "path", "base": "var/log"}}},
            "template 'bad' (commands[0]) placeholders.x.base: must be an absolute path",
        ),
        (
            {"argv": ["/bin/echo", "{x}"], "placeholders": {"x": {"type": "float"}}},
            "(commands[0]) placeholders.x: Input tag 'float' found using 'type' does not match",
        ),
        ({"argv": ["/bin/echo"], "cwd": "relative"}, "template 'bad' (commands[0]) cwd: must be an absolute"),
        ({"argv": ["/bin/echo"], "env": {"A-B": "1"}}, "template 'bad' (commands[0]) env: 'A-B' is not a"),
        ({"argv": ["/bin/echo"], "timeout_seconds": 0}, "template 'bad' (commands[0]) timeout_seconds:"),
        ({"argv": ["/bin/echo"], "max_output_bytes": 0}, "template 'bad' (commands[0]) max_output_bytes:"),
        (
            {"argv": ["/bin/echo"], "retryable_exit_codes": [0]},
            "template 'bad' (commands[0]) retryable_exit_codes: 0 is not a failing exit code",
        ),
    ],
)
def test_a_bad_template_is_a_config_error_naming_the_template_and_the_field(
    template: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        templates({"name": "bad", **template})
    assert str(caught.value).startswith("TASKPLATFORM_AGENT_COMMANDS_FILE test.json: ")
    assert expected in str(caught.value)


def test_a_bad_name_and_a_repeated_name_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"\(commands\[0\]\) name: String should match pattern"):
        templates({"name": "Bad Name", "argv": ["/bin/echo"]})
    with pytest.raises(ConfigError, match="template name 'twice' is used twice"):
        templates({"name": "twice", "argv": ["/bin/echo"]}, {"name": "twice", "argv": ["/bin/true"]})
    with pytest.raises(ConfigError, match="commands: List should have at least 1 item"):
        templates()


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("commands.yaml", "commands: []", "must end in .json or .toml"),
        ("commands.json", "{not json", "not valid JSON"),
        ("commands.toml", "[[commands]\n", "not valid TOML"),
        ("commands.json", '{"templates": []}', "commands: Field required; templates: Extra inputs"),
        ("missing.json", None, "cannot read it"),
    ],
)
def test_an_unreadable_file_is_a_config_error_naming_it(
    tmp_path: Path, name: str, content: str | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        CommandTemplates.load(path)
    assert f"TASKPLATFORM_AGENT_COMMANDS_FILE {path}: " in str(caught.value)
    assert expected in str(caught.value)


# ---------------------------------------------------------------- arguments
def test_an_unknown_template_and_missing_or_extra_arguments_are_refused() -> None:
    allow = one({"type": "str"})
    with pytest.raises(TemplateArgsError, match="unknown template 'nope'; this agent allows: t"):
        allow.template("nope")
    with pytest.raises(TemplateArgsError, match="missing argument"):
        allow.template("t").render({})
    with pytest.raises(TemplateArgsError, match="unknown argument.*: other; this template takes: value"):
        allow.template("t").render({"value": "x", "other": "y"})


def test_a_value_is_one_argv_item_even_embedded_and_with_spaces() -> None:
    allow = one({"type": "str"}, argv_item="--name={value}.log {{literal}}")
    assert allow.template("t").render({"value": "a b  c"}) == ["/bin/echo", "--name=a b  c.log {literal}"]


@pytest.mark.parametrize(
    "value", ["line\nbreak", "tab\there", "bell\x07", "esc\x1b[31m", "c1\x85", "nul\x00"]
)
def test_a_str_without_pattern_refuses_control_characters(value: str) -> None:
    with pytest.raises(TemplateArgsError, match="argument 'value' \\(str\\): contains"):
        render(one({"type": "str"}), value)


def test_a_str_without_pattern_refuses_a_leading_dash_and_a_long_value() -> None:
    allow = one({"type": "str", "max_length": 5})
    assert render(allow, "a-b") == "a-b"
    with pytest.raises(TemplateArgsError, match="starts with '-'"):
        render(allow, "-rf")
    with pytest.raises(TemplateArgsError, match="longer than 5 characters"):
        render(allow, "abcdef")
    with pytest.raises(TemplateArgsError, match="must be a string, got int"):
        render(allow, 5)


def test_a_str_pattern_must_match_the_whole_value_and_may_allow_newlines() -> None:
    plain = one({"type": "str", "pattern": "[a-z]+"})
    assert render(plain, "abc") == "abc"
    with pytest.raises(TemplateArgsError, match="does not match the pattern"):
        render(plain, "abc;rm")
    multiline = one({"type": "str", "pattern": r"[a-z\n-]+"})
    assert render(multiline, "-a\nb") == "-a\nb"
    with pytest.raises(TemplateArgsError, match="contains NUL"):
        render(one({"type": "str", "pattern": r"(?s).*"}), "a\x00b")


def test_an_int_is_bounded_and_not_a_boolean() -> None:
    allow = one({"type": "int", "min": 1, "max": 10})
    assert render(allow, 7) == "7"
    assert render(allow, "10") == "10"
    for value, why in ((0, "below the minimum 1"), (11, "above the maximum 10"), (True, "got a boolean")):
        with pytest.raises(TemplateArgsError, match=why):
            render(allow, value)
    with pytest.raises(TemplateArgsError, match="must be an integer"):
        render(allow, "3; ls")


def test_an_enum_takes_only_its_choices() -> None:
    allow = one({"type": "enum", "choices": ["nginx", "postgres"]})
    assert render(allow, "nginx") == "nginx"
    with pytest.raises(TemplateArgsError, match="must be one of: nginx, postgres"):
        render(allow, "nginx ")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """base/{logs/app.log, inside -> logs, outside -> ../secret}, secret/key."""
    base = tmp_path / "base"
    (base / "logs").mkdir(parents=True)
    (base / "logs" / "app.log").write_text("x")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k")
    (base / "inside").symlink_to(base / "logs")
    (base / "outside").symlink_to(tmp_path / "secret")
    return base


def test_a_path_resolves_under_its_base(tree: Path) -> None:
    allow = one({"type": "path", "base": str(tree)})
    real = os.path.realpath(tree)
    assert render(allow, "logs/app.log") == f"{real}/logs/app.log"
    assert render(allow, f"{tree}/logs/app.log") == f"{real}/logs/app.log"
    assert render(allow, "inside/app.log") == f"{real}/logs/app.log"
    assert render(allow, "logs/not-yet-there") == f"{real}/logs/not-yet-there"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("../secret/key", "contains a '..' component"),
        ("logs/../../secret/key", "contains a '..' component"),
        ("logs/..", "contains a '..' component"),
        ("/etc/passwd", "resolves outside"),
        ("outside/key", "resolves outside"),
        ("", "must be a non-empty path"),
        ("logs/a\nb", "control character"),
    ],
)
def test_a_path_escaping_its_base_is_refused(tree: Path, value: str, why: str) -> None:
    with pytest.raises(TemplateArgsError, match=why):
        render(one({"type": "path", "base": str(tree)}), value)


def test_a_base_that_is_itself_a_symlink_still_confines(tree: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(tree)
    allow = one({"type": "path", "base": str(alias)})
    assert render(allow, "logs/app.log") == f"{os.path.realpath(tree)}/logs/app.log"
    with pytest.raises(TemplateArgsError, match="resolves outside"):
        render(allow, "outside/key")
