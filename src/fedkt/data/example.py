"""The one record every library consumes: a prompt plus either choices or a reference answer.

Tasks differ only in how a hub row becomes an `Example` (see `fedkt.data.tasks`); evaluation
and training never look at raw rows, so a new task needs no change outside `tasks.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedkt.errors import DataError

TARGET_DELIMITER = " "
"""lm-eval's default ``target_delimiter``: put between the context and every continuation, so
training sees the same token boundary that log-likelihood evaluation scores."""


@dataclass(frozen=True)
class Example:
    """One task instance, already in the prompt format of its task.

    Multiple-choice examples carry `choices` and the `gold` index; generative ones carry no
    choices, ``gold == -1``, the full reference `target` to train on and the short `answer`
    compared by exact match. `question` is the row's raw question text (ARC/CQA ``question``,
    OBQA ``question_stem``, GSM8K ``question``, AG News ``text``) without prompt scaffolding or
    choices, for formats that re-wrap the question (FedCoT, `fedkt.data.cot`); it is ``""`` for
    examples not built from a task row.
    """

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int
    target: str = ""
    answer: str = ""
    question: str = ""

    def __post_init__(self) -> None:
        # Caught here, a bad gold index fails at load time instead of as an IndexError deep
        # inside a training or scoring batch.
        if self.choices and not 0 <= self.gold < len(self.choices):
            raise DataError(
                f"example {self.id!r}: gold index {self.gold} is outside its "
                f"{len(self.choices)} choices; fix the row's answer field"
            )
        if not self.choices and (self.gold != -1 or not self.target):
            raise DataError(
                f"example {self.id!r}: a generative example needs gold=-1 and a non-empty "
                f"target (got gold={self.gold}, target={self.target!r})"
            )

    @property
    def is_generative(self) -> bool:
        """True when the model must generate an answer rather than pick one of `choices`."""
        return not self.choices

    def training_pair(self) -> tuple[str, str]:
        """(context, continuation) for answer-only training.

        The continuation is ``TARGET_DELIMITER + choices[gold]`` for multiple choice and
        ``TARGET_DELIMITER + target`` for generative tasks, i.e. exactly the string that
        lm-eval would score (or expect) after the context.
        """
        answer = self.target if self.is_generative else self.choices[self.gold]
        return self.context, TARGET_DELIMITER + answer
