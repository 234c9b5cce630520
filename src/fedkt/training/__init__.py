"""fedkt.training: answer-only batches, CE and KD losses, and the (multi-task) fine-tuning loop."""

from fedkt.training.batching import IGNORE_INDEX, collate, encode_answer_only
from fedkt.training.dp_generator import DPReport, DPSettings, train_generator_dp
from fedkt.training.loop import (
    TrainReport,
    TrainSettings,
    grad_scaler,
    train_answer_only,
    train_multitask,
)
from fedkt.training.losses import (
    answer_cross_entropy,
    answer_positions,
    kd_loss,
    min_ce_rows,
    selective_kd_loss,
    sequence_cross_entropy,
)
from fedkt.training.seeds import derive_seed

__all__ = [
    "IGNORE_INDEX",
    "DPReport",
    "DPSettings",
    "TrainReport",
    "TrainSettings",
    "answer_cross_entropy",
    "answer_positions",
    "collate",
    "derive_seed",
    "encode_answer_only",
    "grad_scaler",
    "kd_loss",
    "min_ce_rows",
    "selective_kd_loss",
    "sequence_cross_entropy",
    "train_answer_only",
    "train_generator_dp",
    "train_multitask",
]
