"""Collection settings shared by the test suite and the doctests in scaleplan/."""

import importlib.util

collect_ignore = ["scaleplan/__main__.py"]
if importlib.util.find_spec("torch") is None:
    # The reference model needs torch; its tests skip themselves, its doctests are not collected.
    collect_ignore.append("scaleplan/reference")
