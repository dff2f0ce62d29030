"""Reports of the pipeline's results: markdown tables, PNG charts, HTML pages for Decks and MLflow."""
