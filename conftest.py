"""Collection settings shared by the test suite and the doctests in scaleplan/."""

import importlib.util

collect_ignore = ["scaleplan/__main__.py"]
if importlib.util.find_spec("torch") is None:
    # The reference model needs torch; its tests skip themselves, its doctests are not collected.
    collect_ignore.append("scaleplan/reference")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_config_caches() -> None:
    """Each test computes its configs' counts, shapes and FLOPs itself: results that
    `scaleplan.model.shapes.per_config` kept from another test (or from the parent process
    mutation testing forks from) would hide a changed formula."""
    from scaleplan.model.shapes import clear_config_caches

    clear_config_caches()
