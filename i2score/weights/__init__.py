"""Weight files: one safe unpickler for the whole package."""
