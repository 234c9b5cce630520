"""fedkt.data: tasks in the Hugging Face row schema, their prompt formats, and partitioning.

Rows come from the hub (``datasets``) or from local JSONL files in the same schema; every task
row becomes an `Example`, the one record the evaluation and training libraries consume.
`fedkt.data.cot` holds FedCoT's text formats (prompts, rationale filter, predict/explain tasks);
`fedkt.data.curation` and `fedkt.data.augmentation` the FDKT server's filters and LLM prompts.
"""

from fedkt.data.augmentation import (
    Augmentation,
    LabelledText,
    augment,
    build_prompts,
    dedupe_against,
    parse_augmented,
)
from fedkt.data.cot import (
    RATIONALE_STOP,
    WORKED_EXAMPLES,
    WorkedExample,
    clean_rationale,
    explain_example,
    predict_example,
    rationale_request,
    recovery_prompt,
    render_question,
)
from fedkt.data.curation import (
    Curated,
    CurationReport,
    CurationSettings,
    curate,
    pools_by_label,
    sample_across_clusters,
    select_demonstrations,
)
from fedkt.data.custom import CustomTask
from fedkt.data.example import TARGET_DELIMITER, Example
from fedkt.data.partition import split_dev, split_dirichlet, split_fedcollm, split_iid
from fedkt.data.sources import DATA_DIR_ENV, load_examples, load_rows, resolve_data_dir
from fedkt.data.tasks import TASKS, TaskSpec, get_task
from fedkt.data.tokenization import encode_pair, tok_encode

__all__ = [
    "DATA_DIR_ENV",
    "RATIONALE_STOP",
    "TARGET_DELIMITER",
    "TASKS",
    "WORKED_EXAMPLES",
    "Augmentation",
    "Curated",
    "CurationReport",
    "CurationSettings",
    "CustomTask",
    "Example",
    "LabelledText",
    "TaskSpec",
    "WorkedExample",
    "augment",
    "build_prompts",
    "clean_rationale",
    "curate",
    "dedupe_against",
    "encode_pair",
    "explain_example",
    "get_task",
    "load_examples",
    "load_rows",
    "parse_augmented",
    "pools_by_label",
    "predict_example",
    "rationale_request",
    "recovery_prompt",
    "render_question",
    "resolve_data_dir",
    "sample_across_clusters",
    "select_demonstrations",
    "split_dev",
    "split_dirichlet",
    "split_fedcollm",
    "split_iid",
    "tok_encode",
]
