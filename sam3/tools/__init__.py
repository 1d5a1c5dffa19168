"""Small command-line tools (`python -m sam3.tools.X`) and their reusable helpers."""
