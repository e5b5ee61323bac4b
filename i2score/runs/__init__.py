"""Batch jobs without Prefect: configuration, the op registry, planning, execution, outputs and
reports."""
