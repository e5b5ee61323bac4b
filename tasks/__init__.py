"""Prefect tasks: thin wrappers around :mod:`i2score.runs` that take and return small references
(run ids, batch ids, counts), never images or tensors."""
