"""Scaling laws: predicted loss, compute-optimal allocation and token budgets.

Two functional forms are built in, behind one interface (`BaseScalingLaw`):

- `ScalingLaw`: ``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, eq. 2). The
  Chinchilla fits, Epoch AI's replication and laws you fit yourself (`fit_scaling_law`) have
  this form, as do the web-text laws ``porian2024-refinedweb`` and ``porian2024-owt2``, fitted
  by scaleplan to Porian et al. 2024's IsoFLOP data (``scaleplan.scaling.porian2024``).
- `KaplanScalingLaw`: ``L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D`` (Kaplan et
  al. 2020, eq. 1.5), on non-embedding parameters.

Every law answers the same questions, vectorised (numpy arrays in, arrays out; scalars in, floats
out): `loss`, `tokens_for_loss`, `params_for_loss`, `optimal_n_params`, `optimal_tokens`,
`compute_optimal`. N is a parameter count (``law.n_counts`` says whether total or non-embedding),
D is training tokens, C is training FLOPs, and loss is in nats per token on the law's own data.

Training compute here is the ``6 N D`` approximation (Kaplan et al. 2020, section 2.1). The
attention-aware count per token lives in ``scaleplan.compute.flops.flops_per_token``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, overload

from pydantic import Field

from scaleplan.errors import UnknownNameError
from scaleplan.scaling.base import TRAINING_FLOPS_PER_PARAM_TOKEN, BaseScalingLaw, FitReport
from scaleplan.scaling.numbers import as_float64, power, where_positive

if TYPE_CHECKING:
    from scaleplan.scaling.base import Floats

__all__ = ["KaplanScalingLaw", "ScalingLaw", "scaling_law", "scaling_laws"]


class ScalingLaw(BaseScalingLaw):
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, eq. 2).

    Built-in instances come from `scaling_law`; `fit_scaling_law` returns one fitted to your data
    (with ``fit`` set). Compute-optimal allocation under C = 6 N D (Hoffmann 2022, eq. 4):
    ``N_opt = G (C/6)^a``, ``D_opt = (C/6)^b / G`` with ``a = beta / (alpha + beta)``,
    ``b = alpha / (alpha + beta)`` and ``G = (alpha A / (beta B))^(1 / (alpha + beta))``.

    >>> law = ScalingLaw(name="mine", paper="my runs", equation="E + A/N^a + B/D^b",
    ...                  n_counts="total", E=1.7, A=400.0, B=400.0, alpha=0.34, beta=0.28)
    >>> round(law.loss(1e9, 2e10), 3)
    2.571
    """

    E: float = Field(ge=0, description="Irreducible loss, nats per token.")
    A: float = Field(gt=0, description="Model-size term coefficient.")
    B: float = Field(gt=0, description="Data term coefficient.")
    alpha: float = Field(gt=0, description="Model-size exponent: the loss falls as N^-alpha.")
    beta: float = Field(gt=0, description="Data exponent: the loss falls as D^-beta.")
    fit: FitReport | None = Field(default=None, description="Set when fitted by fit_scaling_law.")

    @property
    def G(self) -> float:  # noqa: N802 (Hoffmann's name)
        """``(alpha A / (beta B))^(1 / (alpha + beta))`` (Hoffmann 2022, eq. 4)."""
        return float((self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta)))

    @property
    def allocation_exponents(self) -> tuple[float, float]:
        """``(a, b)``: N_opt grows as C^a and D_opt as C^b (Hoffmann 2022, eq. 4).

        >>> [round(x, 3) for x in scaling_law("epoch2024").allocation_exponents]
        [0.513, 0.487]
        """
        total = self.alpha + self.beta
        return self.beta / total, self.alpha / total

    def _loss(self, N: Floats, D: Floats) -> Floats:
        return self.E + self.A / power(N, self.alpha) + self.B / power(D, self.beta)

    def _tokens_for_loss(self, L: Floats, N: Floats) -> Floats:
        left = L - self.E - self.A / power(N, self.alpha)  # what the data term may contribute
        return where_positive(left, lambda x: power(self.B / x, 1 / self.beta))

    def _params_for_loss(self, L: Floats, D: Floats) -> Floats:
        left = L - self.E - self.B / power(D, self.beta)
        return where_positive(left, lambda x: power(self.A / x, 1 / self.alpha))

    def _optimal_n_params(self, C: Floats) -> Floats:
        a, _ = self.allocation_exponents
        return self.G * power(C / TRAINING_FLOPS_PER_PARAM_TOKEN, a)

    def _optimal_flops_for_params(self, N: Floats) -> Floats:
        a, _ = self.allocation_exponents
        return TRAINING_FLOPS_PER_PARAM_TOKEN * power(N / self.G, 1 / a)

    def _optimal_flops_for_tokens(self, D: Floats) -> Floats:
        _, b = self.allocation_exponents
        return TRAINING_FLOPS_PER_PARAM_TOKEN * power(D * self.G, 1 / b)


class KaplanScalingLaw(BaseScalingLaw):
    """``L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D`` (Kaplan 2020, eq. 1.5).

    N counts non-embedding parameters. With unlimited data this is Kaplan's L(N) =
    (N_c / N)^alpha_N (eq. 1.1); with an unlimited model, L(D) = (D_c / D)^alpha_D (eq. 1.2).

    ``compute_optimal`` minimises this L(N, D) under C = 6 N D, which gives
    ``N_opt = (p N_c^p C / (6 D_c))^(1 / (1 + p))`` with ``p = alpha_N / alpha_D`` (N grows as
    C^0.56). That is *not* Kaplan's own compute-efficient frontier (N ~ C^0.73, eq. 1.7), which
    comes from their learning-curve fit L(N, S_min) and stops training early.

    >>> law = scaling_law("kaplan2020")
    >>> round(law.loss(1e9, 1e10), 3)
    2.484
    """

    N_c: float = Field(gt=0, description="Model-size scale, non-embedding parameters.")
    D_c: float = Field(gt=0, description="Data scale, tokens.")
    alpha_N: float = Field(gt=0, description="Model-size exponent.")  # noqa: N815 (paper's name)
    alpha_D: float = Field(gt=0, description="Data exponent.")  # noqa: N815 (paper's name)

    @property
    def _p(self) -> float:
        return self.alpha_N / self.alpha_D

    def _loss(self, N: Floats, D: Floats) -> Floats:
        return power(power(self.N_c / N, self._p) + self.D_c / D, self.alpha_D)

    def _tokens_for_loss(self, L: Floats, N: Floats) -> Floats:
        left = power(L, 1 / self.alpha_D) - power(self.N_c / N, self._p)
        return where_positive(left, lambda x: self.D_c / x)

    def _params_for_loss(self, L: Floats, D: Floats) -> Floats:
        left = power(L, 1 / self.alpha_D) - self.D_c / D
        return where_positive(left, lambda x: self.N_c / power(x, 1 / self._p))

    def _optimal_n_params(self, C: Floats) -> Floats:
        # d/dN [(N_c/N)^p + 6 D_c N / C] = 0
        p = self._p
        ratio = p * self.N_c**p * C / (TRAINING_FLOPS_PER_PARAM_TOKEN * self.D_c)
        return as_float64(power(ratio, 1 / (1 + p)))

    def _optimal_flops_for_params(self, N: Floats) -> Floats:
        p = self._p
        C = TRAINING_FLOPS_PER_PARAM_TOKEN * self.D_c * power(N, 1 + p) / (p * self.N_c**p)
        return as_float64(C)

    def _optimal_flops_for_tokens(self, D: Floats) -> Floats:
        # at the optimum D = C / (6 N) = D_c N^p / (p N_c^p); solve for N, then C = 6 N D
        p = self._p
        N = power(D * p * self.N_c**p / self.D_c, 1 / p)
        return as_float64(TRAINING_FLOPS_PER_PARAM_TOKEN * N * D)


# Muennighoff et al. 2023 fit the Chinchilla form to single-epoch C4 runs; the datablations
# README gives the constants as logs: a = log A, b = log B, e = log E.
_MUENNIGHOFF_LOG_A, _MUENNIGHOFF_LOG_B, _MUENNIGHOFF_LOG_E = 6.255414, 7.3049974, 0.6254804
_MUENNIGHOFF_ALPHA = _MUENNIGHOFF_BETA = 0.3526596


def _hoffmann_form(name: str, paper: str, *, allocation: bool = False,
                   **constants: float) -> ScalingLaw:
    """A published law of Hoffmann et al.'s form on total parameters; ``allocation`` where the
    paper also gives the compute-optimal allocation (eq. 4)."""
    equation = "L = E + A/N^alpha + B/D^beta (Hoffmann eq. 2)"
    return ScalingLaw(name=name, paper=paper, n_counts="total", **constants,
                      equation=equation + (", allocation eq. 4" if allocation else ""))


def _porian2024(dataset: str, n_points: int, objective: float, *,
                intervals: dict[str, tuple[float, float]], standard_errors: dict[str, float],
                **constants: float) -> ScalingLaw:
    """A web-text law fitted by scaleplan (``scaleplan.scaling.porian2024``, refitted by
    ``benchmarks/fit_porian2024.py``) to Porian et al. 2024's IsoFLOP points on ``dataset``."""
    suffix = {"RefinedWeb": "refinedweb", "OpenWebText2": "owt2"}[dataset]
    return ScalingLaw(
        name=f"porian2024-{suffix}",
        paper="Porian et al. 2024, Resolving Discrepancies in Compute-Optimal Scaling of Language "
        f"Models (arXiv:2406.19146): fitted by scaleplan to the {n_points} IsoFLOP points with "
        f"D >= N of 'Optimizer tuning (no decay)' on {dataset} (5M-902M parameters, 1.25e16-"
        "2.56e19 FLOPs); validation loss in nats per token of the GPT-NeoX tokenizer "
        "(vocabulary 50432) at sequence 2048; N counts non-embedding and output-layer weights",
        equation="L = E + A/N^alpha + B/D^beta (Hoffmann eq. 2), Huber on log loss, "
        "1000 bootstrap resamples",
        n_counts="total", **constants,
        fit=FitReport(n_points=n_points, huber_delta=1e-3, objective=objective, n_starts=16,
                      n_bootstrap=1000, confidence=0.95, standard_errors=standard_errors,
                      intervals=intervals),
    )


_LAWS: dict[str, BaseScalingLaw] = {
    law.name: law
    for law in (
        _hoffmann_form(
            "chinchilla",
            "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, Approach 3 "
            "(unrounded constants from the paper's source; the only ones that reproduce its "
            "~40B projection at Gopher's 5.76e23 FLOPs)",
            E=1.69337368, A=406.401018, B=410.722827, alpha=0.33917084, beta=0.2849083,
            allocation=True,
        ),
        _hoffmann_form(
            "chinchilla-rounded",
            "Hoffmann et al. 2022, Approach 3 as printed in the paper body (rounded)",
            E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, allocation=True,
        ),
        _hoffmann_form(
            "epoch2024",
            "Besiroglu, Erdil, Barnett, You 2024, Chinchilla Scaling: A replication attempt "
            "(arXiv:2404.10102), refit of Approach 3 on Hoffmann's Fig. 4 data",
            E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
        ),
        _hoffmann_form(
            "muennighoff2023",
            "Muennighoff et al. 2023, Scaling Data-Constrained Language Models, single-epoch fit "
            "on C4 (constants from the datablations README)",
            E=math.exp(_MUENNIGHOFF_LOG_E), A=math.exp(_MUENNIGHOFF_LOG_A),
            B=math.exp(_MUENNIGHOFF_LOG_B), alpha=_MUENNIGHOFF_ALPHA, beta=_MUENNIGHOFF_BETA,
        ),
        # Refitted by `python -m benchmarks.fit_porian2024` (docs/scaling.md, "Laws for web text").
        _porian2024(
            "RefinedWeb", 97, 0.0019737766779598237,
            E=2.71331556908467, A=453.97051309739317, B=1950.504456555314,
            alpha=0.3733614789671678, beta=0.39711543223717677,
            intervals={"E": (2.293379367456483, 2.9935853902764613),
                       "A": (64.96644481217953, 7811.266967567891),
                       "B": (187.48714896899475, 51436.192918228),
                       "alpha": (0.23607320073845123, 0.562485587517833),
                       "beta": (0.26945613754687686, 0.5758589346124636)},
            standard_errors={"E": 0.1712658042796847, "A": 7856.312495442675,
                             "B": 17086.294249867435, "alpha": 0.08009830479476567,
                             "beta": 0.07424983487015972},
        ),
        _porian2024(
            "OpenWebText2", 92, 0.001965602827339466,
            E=2.3530309197762427, A=343.5322112311062, B=4946.400627559725,
            alpha=0.3531863884906838, beta=0.4405027528176351,
            intervals={"E": (1.7298941524366023, 2.6046747026294854),
                       "A": (26.865061590443094, 4461.854707851815),
                       "B": (526.6400893100405, 27167.23546056854),
                       "alpha": (0.17835013369551572, 0.5252856398620636),
                       "beta": (0.31859903449222937, 0.5293833043862335)},
            standard_errors={"E": 0.24159471147652917, "A": 1856.6993673934794,
                             "B": 12295.927111424071, "alpha": 0.08660058296773718,
                             "beta": 0.053738021558226726},
        ),
        KaplanScalingLaw(
            name="kaplan2020",
            paper="Kaplan et al. 2020, Scaling Laws for Neural Language Models (WebText2, "
            "non-embedding parameters); N_c, alpha_N from eq. 1.1, D_c, alpha_D from eq. 1.2",
            equation="L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (eq. 1.5)",
            n_counts="non_embedding",
            N_c=8.8e13, D_c=5.4e13, alpha_N=0.076, alpha_D=0.095,
        ),
    )
}


def scaling_laws() -> tuple[str, ...]:
    """Names accepted by `scaling_law`.

    >>> scaling_laws()  # doctest: +NORMALIZE_WHITESPACE
    ('chinchilla', 'chinchilla-rounded', 'epoch2024', 'kaplan2020', 'muennighoff2023',
     'porian2024-owt2', 'porian2024-refinedweb')
    """
    return tuple(sorted(_LAWS))


@overload
def scaling_law(name: Literal["kaplan2020"]) -> KaplanScalingLaw: ...
@overload
def scaling_law(
    name: Literal["chinchilla", "chinchilla-rounded", "epoch2024", "muennighoff2023",
                  "porian2024-owt2", "porian2024-refinedweb"] = ...,
) -> ScalingLaw: ...
@overload
def scaling_law(name: str | BaseScalingLaw) -> BaseScalingLaw: ...
def scaling_law(name: str | BaseScalingLaw = "chinchilla") -> BaseScalingLaw:
    """A built-in law by name (case-insensitive); a law passed in is returned unchanged.

    >>> scaling_law().name, scaling_law("Epoch2024").alpha
    ('chinchilla', 0.3478)
    """
    if isinstance(name, BaseScalingLaw):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if key not in _LAWS:
        raise UnknownNameError("scaling law", name, _LAWS)
    return _LAWS[key]
