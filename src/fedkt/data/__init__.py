"""fedkt.data: tasks in the Hugging Face row schema, their prompt formats, and partitioning.

Rows come from the hub (``datasets``) or from local JSONL files in the same schema; every task
row becomes an `Example`, the one record the evaluation and training libraries consume.
"""

from fedkt.data.example import TARGET_DELIMITER, Example
from fedkt.data.partition import split_dirichlet, split_fedcollm, split_iid
from fedkt.data.sources import DATA_DIR_ENV, load_examples, load_rows, resolve_data_dir
from fedkt.data.tasks import TASKS, TaskSpec, get_task
from fedkt.data.tokenization import encode_pair, tok_encode

__all__ = [
    "DATA_DIR_ENV",
    "TARGET_DELIMITER",
    "TASKS",
    "Example",
    "TaskSpec",
    "encode_pair",
    "get_task",
    "load_examples",
    "load_rows",
    "resolve_data_dir",
    "split_dirichlet",
    "split_fedcollm",
    "split_iid",
    "tok_encode",
]
