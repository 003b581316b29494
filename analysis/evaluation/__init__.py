"""Batched k-shot ICL evaluation and copy-error classification."""

from analysis.evaluation.icl import EvalResult, classify, evaluate_task, generate_answers, plan_batches

__all__ = ["EvalResult", "classify", "evaluate_task", "generate_answers", "plan_batches"]
