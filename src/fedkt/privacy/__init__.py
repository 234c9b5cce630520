"""fedkt.privacy: token-level text DP (exponential mechanism, adaptive EM) and leakage audits.

A client builds a `PerturbationKit` from public embeddings (`build_kit`), perturbs its prompts
with a `TextPerturber` ("em" or "aem" at a budget eps), sends only `PerturbedText.text`, and
keeps the `PrivacyRecord`s and ids for its report and the audit (`inversion_recovery`,
`answer_leak_rate`). Privacy semantics are in the docstrings of `mechanisms` (EM, Δu = 2, why
AEM's data-dependent split stays eps_total-DP), `candidates` (what is revealed) and `perturb`
(what eps means per strategy). DP-SGD accounting (FDKT's generator) is in `accounting`:
`noise_for_target` and `epsilon_spent` over opacus's RDP accountant.
"""

from fedkt.privacy.accounting import (
    check_target,
    epsilon_spent,
    noise_for_target,
    poisson_schedule,
)
from fedkt.privacy.audit import answer_leak_rate, inversion_recovery, map_inversion
from fedkt.privacy.candidates import CandidateSet, PerturbationKit, build_kit
from fedkt.privacy.importance import public_importance
from fedkt.privacy.mechanisms import (
    COSINE_SENSITIVITY,
    allocate_budget,
    allocate_segments,
    check_eps,
    em_probabilities,
)
from fedkt.privacy.perturb import (
    STRATEGIES,
    PerturbedText,
    PrivacyRecord,
    Strategy,
    TextPerturber,
    privacy_summary,
    sample_em,
    unperturbed,
)

__all__ = [
    "COSINE_SENSITIVITY",
    "STRATEGIES",
    "CandidateSet",
    "PerturbationKit",
    "PerturbedText",
    "PrivacyRecord",
    "Strategy",
    "TextPerturber",
    "allocate_budget",
    "allocate_segments",
    "answer_leak_rate",
    "build_kit",
    "check_eps",
    "check_target",
    "em_probabilities",
    "epsilon_spent",
    "inversion_recovery",
    "map_inversion",
    "noise_for_target",
    "poisson_schedule",
    "privacy_summary",
    "public_importance",
    "sample_em",
    "unperturbed",
]
