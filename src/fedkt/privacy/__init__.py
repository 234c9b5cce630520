"""fedkt.privacy: text DP for FedCoT's prompts (token mechanisms, DP paraphrase), leakage audits.

A client builds a `PerturbationKit` from public embeddings (`build_kit`), perturbs its prompts
with a `TextPerturber` at a budget eps, sends only `PerturbedText.text`, and keeps the
`PrivacyRecord`s and ids for its report and the audit (`inversion_recovery` beside the
`prior_only_recovery` baseline, `answer_leak_rate`, `pattern_uniqueness`). Outside a seeded
simulation the noise comes from `secure_generator`. The token mechanisms (`STRATEGIES`):

- "em" and "aem" (`mechanisms`: EM, Δu = 2, why AEM's data-dependent split stays
  eps_total-DP);
- "krr" (`krr`: k-ary randomized response over a token's candidate set);
- "custext" (`custext`: EM or k-RR inside fixed public clusters, `cluster_kit`);
- "metric" (`metric`: d_X-privacy with d = sqrt(2 - 2 cos)).

Each one's guarantee in words is `perturb.mechanism_guarantee` (`krr_guarantee`,
`custext_guarantee`, `metric_guarantee`), their MAP attackers `inversion.mechanism_recovery`.
What each releases in clear is in `candidates`, what eps means per strategy in `perturb`.
`paraphrase` is DP-Prompt (`Paraphraser`, `ParaphraseSettings`): a local LM writes a fixed
number of tokens, each an EM draw over its clipped logits; any two texts are neighbours and
nothing is released in clear. `retention` measures each token mechanism's retention r(eps) on
public text and the eps of its knees (`measure_knees`, `fedkt retention`; the measured grids:
`MEASURED_GRIDS`). DP-SGD accounting (FDKT's generator) is in `accounting`:
`noise_for_target` and `epsilon_spent` over opacus's RDP accountant.
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
from fedkt.privacy.custext import cluster_kit, custext_guarantee
from fedkt.privacy.importance import public_importance, public_unigram
from fedkt.privacy.krr import krr_guarantee
from fedkt.privacy.mechanisms import (
    COSINE_SENSITIVITY,
    allocate_budget,
    allocate_segments,
    check_eps,
    em_probabilities,
)
from fedkt.privacy.metric import metric_guarantee
from fedkt.privacy.paraphrase import Paraphraser, ParaphraseSettings
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
from fedkt.privacy.retention import MEASURED_GRIDS, measure_knees

__all__ = [
    "COSINE_SENSITIVITY",
    "MEASURED_GRIDS",
    "PARTITIONS",
    "RELEASED_IN_CLEAR",
    "STRATEGIES",
    "CandidateSet",
    "ParaphraseSettings",
    "Paraphraser",
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
    "cluster_kit",
    "custext_guarantee",
    "em_probabilities",
    "epsilon_spent",
    "inversion_recovery",
    "join_perturbed",
    "krr_guarantee",
    "map_inversion",
    "measure_knees",
    "metric_guarantee",
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
