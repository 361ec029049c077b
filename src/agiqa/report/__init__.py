"""`agiqa report`: the figures and tables of evaluation, reproduction and scoring runs, as one HTML page."""
