"""Refit the web-text laws ``porian2024-refinedweb`` and ``porian2024-owt2`` (issue 22).

``python -m benchmarks.fit_porian2024 [--bootstrap 1000] [--a-resamples 300]`` fits
``L = E + A/N^alpha + B/D^beta`` to Porian et al. 2024's IsoFLOP points (the headline experiment,
points with D >= N) with `fit_scaling_law`, prints the constants and bootstrap intervals that
``scaleplan/scaling/laws.py`` stores, and compares the compute-optimal exponent a with the
paper's: from the fitted law (a = beta / (alpha + beta), with a percentile interval over refits
of resampled points) and from IsoFLOP parabolas (``isoflop_exponent``). Takes a few minutes.
"""

from __future__ import annotations

import argparse

from scaleplan.scaling.porian2024 import (
    DATASETS,
    exponent_interval,
    fit_porian2024,
    isoflop_exponent,
    reference_exponent,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--a-resamples", type=int, default=300)
    args = parser.parse_args(argv)
    for dataset in DATASETS:
        law = fit_porian2024(dataset, bootstrap=args.bootstrap)
        report = law.fit
        assert report is not None and report.intervals is not None
        print(f"# {law.name}: {report.n_points} points, objective {report.objective!r}")
        print(f"E={law.E!r}, A={law.A!r}, B={law.B!r}, alpha={law.alpha!r}, beta={law.beta!r},")
        print(f"intervals={report.intervals!r},")
        print(f"standard_errors={report.standard_errors!r},")
        a = law.allocation_exponents[0]
        low, high = exponent_interval(dataset, resamples=args.a_resamples)
        ref = reference_exponent(dataset)
        print(f"# a from the law {a:.4f} ({low:.4f}, {high:.4f}); from IsoFLOP parabolas "
              f"{isoflop_exponent(dataset):.4f}; paper {ref.a:.4f} ({ref.low:.4f}, "
              f"{ref.high:.4f})\n")


if __name__ == "__main__":
    main()
