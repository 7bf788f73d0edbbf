"""The README and docs/ describe what exists: every config section, links that resolve inside
the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from tidal.config import Config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_configuration_section_names_every_config_section() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", section.split("Sections:", 1)[1]))
    sections = {
        name
        for name, field in Config.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }

    assert len(sections) >= 12
    assert sections <= named, sorted(sections - named)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the page
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"
    assert "../shared" not in text and "DESIGN.md" not in text


def test_the_architecture_names_each_extension_point_that_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for base in ("training/executors/base.py", "training/recipes/base.py", "triggers/base.py"):
        assert f"`{base}" in text and (ROOT / "src" / "tidal" / base).is_file()
    for module in ("state.py", "storage.py", "serving/", "alerts.py"):
        assert f"`{module}" in text and (ROOT / "src" / "tidal" / module).exists()
