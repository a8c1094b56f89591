"""docs/configuration.md is what ``taskplatform.settings_doc`` makes of ``PlatformSettings``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taskplatform import settings_doc
from taskplatform.settings import PlatformSettings


def test_the_configuration_page_matches_the_settings() -> None:
    assert settings_doc.PAGE.exists(), f"docs/configuration.md is missing: run {settings_doc.COMMAND}"
    assert settings_doc.PAGE.read_text() == settings_doc.render(), (
        f"docs/configuration.md differs from PlatformSettings: run {settings_doc.COMMAND}"
    )


def test_every_setting_has_a_description_and_a_section() -> None:
    assert settings_doc.missing_descriptions() == []
    placed = [name for _, names in settings_doc.sections() for name in names]
    assert sorted(placed) == sorted(PlatformSettings.model_fields)
    page = settings_doc.render()
    for name in PlatformSettings.model_fields:
        assert f"`TASKPLATFORM_{name.upper()}`" in page


class _Sample(BaseSettings):
    """A settings class to render: sections, types, bounds and defaults of every kind."""

    model_config = SettingsConfigDict(env_prefix="SAMPLE_")

    plain: str = Field(default="x", description="Before any section.")

    # the first section
    count: int = Field(default=3, ge=1, le=9, description="A bounded integer.")
    seconds: float = Field(default=300.0, gt=0, description="A float shown without its .0.")
    mode: Literal["a", "b"] = Field(default="a", description="One of two.")
    # the second section
    names: Annotated[list[str], NoDecode] = Field(default_factory=list, description="A list.")
    tags: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict, description="A map.")
    secret: SecretStr | None = Field(default=None, description="Unset by default.")
    flag: bool = Field(default=False, description="A switch.")
    undocumented: str = ""


def test_the_page_groups_by_section_and_writes_types_and_defaults() -> None:
    assert settings_doc.sections(_Sample) == [
        ("general", ["plain"]),
        ("the first section", ["count", "seconds", "mode"]),
        ("the second section", ["names", "tags", "secret", "flag", "undocumented"]),
    ]
    page = settings_doc.render(_Sample)
    assert "## The first section\n" in page
    assert "- **`SAMPLE_COUNT`** · int, ≥ 1, ≤ 9 · default `3`  \n  A bounded integer." in page
    assert "- **`SAMPLE_SECONDS`** · float, > 0 · default `300`  " in page
    assert "- **`SAMPLE_MODE`** · `a` \\| `b` · default `a`  " in page
    assert "- **`SAMPLE_NAMES`** · list of str · default `[]`  " in page
    assert "- **`SAMPLE_TAGS`** · map of str to str · default empty  " in page
    assert "- **`SAMPLE_SECRET`** · secret string, optional · default unset  " in page
    assert "- **`SAMPLE_FLAG`** · bool · default `false`  " in page


def test_a_setting_without_a_description_is_named() -> None:
    assert settings_doc.missing_descriptions(_Sample) == ["undocumented"]


def test_check_fails_on_a_stale_page_naming_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "configuration.md"
    page.write_text("# Configuration\n\nstale\n")
    monkeypatch.setattr(settings_doc, "PAGE", page)
    assert settings_doc.main(["--check"]) == 1
    assert settings_doc.COMMAND in capsys.readouterr().err
    assert settings_doc.main(["--write"]) == 0
    assert settings_doc.main(["--check"]) == 0
    assert page.read_text() == settings_doc.render()


def test_the_generator_refuses_settings_without_a_description(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(settings_doc, "missing_descriptions", lambda: ["undocumented"])
    assert settings_doc.main(["--check"]) == 1
    assert "undocumented" in capsys.readouterr().err
