"""The typer app of the library's commands (``i2s models|cache|validate|train|bench``)."""
