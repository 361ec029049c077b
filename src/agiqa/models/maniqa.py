"""MANIQA (placeholder until the model lands)."""
