"""Prefect flows of i2score: reconstruct, inpaint, edit, augment (thin: plan, fan out, report)."""
