"""Execute every notebook in a fresh kernel and fail on the first error in any of them.

The notebooks are jupytext ``py:percent`` sources named ``notebooks/NN_name.py``. Each runs in
its own new kernel with ``notebooks/`` as the working directory and the repository root on
``PYTHONPATH`` (so scaleplan imports without being installed); the executed ``.ipynb`` files are
written to ``notebooks/_build/`` for reading.

    python notebooks/run_all.py                 # all of them
    python notebooks/run_all.py 01_seed         # the ones whose name starts with 01_seed

Needs the ``notebooks`` extra: ``pip install -e ".[notebooks]"``. Exit status 1 if any notebook
fails, 2 if the extra is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CELL_TIMEOUT_S = 300  # one cell; the notebooks are arithmetic and small plots


def notebooks(prefixes: Sequence[str] = ()) -> list[Path]:
    found = sorted(HERE.glob("[0-9][0-9]_*.py"))
    return [p for p in found if not prefixes or any(p.stem.startswith(x) for x in prefixes)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only notebooks whose name starts so")
    parser.add_argument("--out", type=Path, default=HERE / "_build",
                        help="where the executed .ipynb files go (default: notebooks/_build)")
    args = parser.parse_args(argv)
    try:
        import jupytext
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError as exc:
        print(f"run_all: {exc.name} is missing; pip install -e \".[notebooks]\"", file=sys.stderr)
        return 2

    paths = notebooks(args.names)
    if not paths:
        print(f"run_all: no notebook matches {args.names}", file=sys.stderr)
        return 1
    # The kernels inherit this environment: scaleplan from this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for path in paths:
        nb = jupytext.read(path, fmt="py:percent")
        client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": str(HERE)}})
        start = time.perf_counter()
        try:
            client.execute()
        except CellExecutionError as exc:
            failed.append(path.name)
            print(f"FAILED {path.name}:\n{exc}", file=sys.stderr)
        else:
            print(f"ok     {path.name} ({time.perf_counter() - start:.1f} s)")
        finally:
            nbformat.write(nb, args.out / f"{path.stem}.ipynb")
    if failed:
        print(f"run_all: {len(failed)} of {len(paths)} notebooks failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
