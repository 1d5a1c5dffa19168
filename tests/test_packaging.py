"""The wheel carries every package and config: `pip install .` (not editable) must give a working sam3."""

from __future__ import annotations

import tomllib

from tests.helpers import CONFIG_DIR, REPO_ROOT


def _setuptools() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_sam3_package_is_listed():
    on_disk = {".".join(path.parent.relative_to(REPO_ROOT).parts) for path in (REPO_ROOT / "sam3").rglob("__init__.py")}
    assert set(_setuptools()["packages"]) == on_disk | {"sam3.configs"}, (
        "pyproject.toml [tool.setuptools] packages must list every sam3 package (the list is explicit "
        "because configs/ is mapped into sam3.configs)"
    )


def test_every_config_is_package_data():
    setuptools = _setuptools()
    assert setuptools["package-dir"]["sam3.configs"] == CONFIG_DIR.name
    patterns = setuptools["package-data"]["sam3.configs"]
    configs = {path.relative_to(CONFIG_DIR) for path in CONFIG_DIR.rglob("*.yaml")}
    shipped = {path.relative_to(CONFIG_DIR) for pattern in patterns for path in CONFIG_DIR.glob(pattern)}
    assert configs == shipped
