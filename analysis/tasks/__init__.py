"""Tasks, prompt building, built-in synthetic and ICL tasks, user CSV/JSON tasks."""

from analysis.tasks.builtin import builtin_tasks, get_task, icl_task_names
from analysis.tasks.files import load_task_file, parse_task_bytes
from analysis.tasks.task import DEFAULT_TEMPLATE, Prompt, Task, normalize_answer

__all__ = ["DEFAULT_TEMPLATE", "Prompt", "Task", "builtin_tasks", "get_task", "icl_task_names",
           "load_task_file", "normalize_answer", "parse_task_bytes"]
