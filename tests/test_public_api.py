"""projector's public surface: `__all__` is pinned and every name imports."""

from __future__ import annotations

import importlib

import pytest

import projector

EXPECTED = [
    "ConfigError",
    "Settings",
    "SigningKey",
    "__version__",
    "load_settings",
    "sign_body",
    "verify_signature",
]


def test_all_is_exactly_the_pinned_public_names() -> None:
    assert sorted(projector.__all__) == EXPECTED


def test_all_has_no_duplicates() -> None:
    assert len(projector.__all__) == len(set(projector.__all__))


@pytest.mark.parametrize("name", EXPECTED)
def test_each_public_name_is_importable_from_projector(name: str) -> None:
    module = importlib.import_module("projector")
    assert getattr(module, name) is not None
    exec(f"from projector import {name}", {})  # noqa: S102 - the import statement itself


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from projector import *", namespace)  # noqa: S102 - what a user's star import sees
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED


def test_version_is_a_dotted_string() -> None:
    parts = projector.__version__.split(".")
    assert len(parts) == 3
    assert all(part.isdigit() for part in parts)
