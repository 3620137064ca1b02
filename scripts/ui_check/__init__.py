"""What ``scripts/check_ui.py`` checks, by concern: the servers it starts, the two UIs' APIs, the pages as
headless chromium renders them, the checks (Dagster's, MLflow's API, what the pages show) and the screenshots."""
