"""One task's data split, and the model loading and evaluation every baseline shares."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedkt.algorithms.fedcollm import FedCoLLMSettings
from fedkt.config import FederationConfig, FedktConfig
from fedkt.data import Example, split_dirichlet, split_fedcollm, split_iid
from fedkt.evaluation import CausalLM
from fedkt.experiments.federated import RoundFn, simulate
from fedkt.federation import FederationResult, FederationSpec, ServerModels
from fedkt.jobs import load_for, placement, score, task_examples
from fedkt.models import add_lora, merged_copy
from fedkt.training import TrainSettings

Role = Literal["llm", "slm"]
Scores = dict[str, float]


def partition(
    examples: Sequence[Example], federation: FederationConfig
) -> tuple[list[list[Example]], list[Example]]:
    """(client parts, public part). The public part is always FedCoLLM's: one of K + 1 equal
    random parts; ``iid``/``dirichlet`` re-split the other K parts' rows among the clients
    (``dirichlet`` skews the gold answer, i.e. the label of a classification task)."""
    k, seed = federation.clients, federation.seed
    parts, public = split_fedcollm(examples, n_parts=k + 1, seed=seed)
    pool = [example for part in parts for example in part]
    splits: dict[str, Callable[[], list[list[Example]]]] = {
        "fedcollm": lambda: parts,
        "iid": lambda: split_iid(pool, k, seed),
        "dirichlet": lambda: split_dirichlet(
            pool, k, federation.alpha, operator.attrgetter("gold"), seed
        ),
    }
    return splits[federation.partition](), public


@dataclass
class TaskRun:
    """One task's split, and what every baseline shares: models, LoRA, evaluation.

    Zero-shot scores are kept once computed: FedAvg's LLM is the untouched base model, so its
    score is the zero-shot one and is not measured twice.
    """

    config: FedktConfig
    clients: list[list[Example]]
    public: list[Example]
    eval_examples: list[Example]
    zero_shot_scores: dict[Role, Scores] = field(default_factory=dict)

    @classmethod
    def load(cls, config: FedktConfig, task: str) -> TaskRun:
        """Read the task's train rows (``data.train_limit``) and evaluation rows, and split."""
        train = task_examples(config, task, "train", config.data.train_limit)
        clients, public = partition(train, config.federation)
        evaluation = task_examples(config, task, config.data.split, config.data.limit)
        return cls(config, clients, public, evaluation)

    @property
    def settings(self) -> FedCoLLMSettings:
        return self.config.fedcollm.settings(self.config.train, self.config.lora)

    @property
    def local_training(self) -> TrainSettings:
        """Non-federated training budget: as many epochs as a client trains over all rounds."""
        train = self.config.train
        return dataclasses.replace(train, epochs=train.epochs * self.settings.rounds)

    def row_counts(self) -> dict[str, Any]:
        return {
            "clients": [len(part) for part in self.clients],
            "public": len(self.public),
            "eval": len(self.eval_examples),
        }

    def load_model(self, role: Role) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        federation = self.config.federation
        return load_for(self.config, federation.llm if role == "llm" else federation.slm)

    def load_lora(self, role: Role) -> tuple[PeftModel, PreTrainedTokenizerBase]:
        """The model with a fresh adapter, seeded like the federation's server models."""
        model, tokenizer = self.load_model(role)
        torch.manual_seed(self.settings.seed)
        return add_lora(model, self.config.lora), tokenizer

    def evaluate(self, model: CausalLM, tokenizer: PreTrainedTokenizerBase) -> Scores:
        """Score ``model``; a LoRA model is scored through a merged copy (2-3x faster on CPU)."""
        if isinstance(model, PeftModel):
            model = merged_copy(model)
        return score(self.config, model, tokenizer, self.eval_examples)

    def zero_shot(self, role: Role) -> Scores:
        if role not in self.zero_shot_scores:
            self.zero_shot_scores[role] = self.evaluate(*self.load_model(role))
        return self.zero_shot_scores[role]

    def federate(
        self, round_fn: RoundFn, roles: tuple[Role, ...], every_round: bool
    ) -> tuple[FederationResult, list[dict[str, Any]]]:
        """Simulate the federation, evaluating the server's ``roles`` after every round (or
        only the last); returns the result and those evaluations in round order."""
        curve: list[dict[str, Any]] = []
        last = self.settings.rounds - 1

        def after_round(t: int, models: ServerModels) -> None:
            if every_round or t == last:
                tokenizer = models.tokenizer
                scores: dict[str, Any] = {
                    role: self.evaluate(getattr(models, role), tokenizer) for role in roles
                }
                curve.append({"round": t + 1, **scores})

        return simulate(self.federation_spec(), round_fn, after_round), curve

    def federation_spec(self) -> FederationSpec:
        federation = self.config.federation
        dtype, device = placement(self.config)
        return FederationSpec(
            llm=federation.llm,
            slm=federation.slm,
            client_data=tuple(tuple(part) for part in self.clients),
            public_data=tuple(self.public),
            settings=self.settings,
            dtype=dtype,
            device=device,
            client_cpus=federation.client_cpus,
            client_gpus=federation.client_gpus,
        )
