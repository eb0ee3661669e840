"""What both stages share (no Airflow, no crowd platform)."""
