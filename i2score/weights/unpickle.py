"""The error shared by i2score's restricted (allow-list) unpicklers."""

from __future__ import annotations

import pickle


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global (callable or class) outside our allow-list.

    Nothing from the file is executed: the load stops at the first such global.
    """

    def __init__(self, module: str, name: str, context: str = "", *, message: str | None = None) -> None:
        self.module = module
        self.name = name
        if message is None:
            message = f"refusing to unpickle global {module}.{name}"
            if context:
                message += f" ({context})"
            message += ": it is not on the allow-list of inert checkpoint types, so loading it could run code"
        super().__init__(message)
