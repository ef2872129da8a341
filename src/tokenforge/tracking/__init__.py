"""MLflow: one parent run per pipeline run, a child run per job, and the store calls of the tools below
(`runs`); comparing runs (`compare`); logging a results bundle after an outage (`bundle`).
"""
