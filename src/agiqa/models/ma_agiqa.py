"""MA-AGIQA (placeholder until the model lands)."""
