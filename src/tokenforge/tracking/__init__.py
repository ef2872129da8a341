"""MLflow: one parent run per pipeline run, a child run per job (`runs`); comparing runs (`compare`);
logging a results bundle after an outage (`bundle`).
"""
