"""fedkt.privacy: token-level text DP (exponential mechanism, adaptive EM) and leakage audits.

A client builds a `PerturbationKit` from public embeddings (`build_kit`), perturbs its prompts
with a `TextPerturber` ("em" or "aem" at a budget eps), sends only `PerturbedText.text`, and
keeps the `PrivacyRecord`s and ids for its report and the audit (`inversion_recovery` beside
the `prior_only_recovery` baseline, `answer_leak_rate`, `pattern_uniqueness`). Outside a
seeded simulation the noise comes from `secure_generator`. Privacy semantics are in the
docstrings of `mechanisms` (EM, Δu = 2, why AEM's data-dependent split stays eps_total-DP),
`candidates` (what is revealed) and `perturb` (what eps means per strategy). DP-SGD
accounting (FDKT's generator) is in `accounting`: `noise_for_target` and `epsilon_spent` over
opacus's RDP accountant.
"""

from fedkt.privacy.accounting import (
    check_target,
    epsilon_spent,
    noise_for_target,
    poisson_schedule,
)
from fedkt.privacy.audit import (
    answer_leak_rate,
    inversion_recovery,
    map_inversion,
    pattern_uniqueness,
    prior_only_recovery,
)
from fedkt.privacy.candidates import (
    PARTITIONS,
    RELEASED_IN_CLEAR,
    CandidateSet,
    Partition,
    PerturbationKit,
    build_kit,
)
from fedkt.privacy.importance import public_importance, public_unigram
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
    join_perturbed,
    privacy_summary,
    sample_em,
    unperturbed,
)
from fedkt.privacy.randomness import secure_generator

__all__ = [
    "COSINE_SENSITIVITY",
    "PARTITIONS",
    "RELEASED_IN_CLEAR",
    "STRATEGIES",
    "CandidateSet",
    "Partition",
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
    "join_perturbed",
    "map_inversion",
    "noise_for_target",
    "pattern_uniqueness",
    "poisson_schedule",
    "prior_only_recovery",
    "privacy_summary",
    "public_importance",
    "public_unigram",
    "sample_em",
    "secure_generator",
    "unperturbed",
]
