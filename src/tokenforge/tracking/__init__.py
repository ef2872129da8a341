"""MLflow: one parent run per pipeline run and a child run per job, live or deferred (`runs`), with a run per variant
of an experiment's grid between them (`variants`); deferred tracking, spooled by jobs (`spool`) and replayed into the
store (`sync`); comparing runs (`compare`); logging a results bundle after an outage (`bundle`); and what they all
share, the client, its retries and the store calls of the tools (`base`).
"""

# mlflow.mode: `live` logs each call of a job to the store as it happens; `deferred` appends it to a spool file
# under RESULTS_DIR/mlflow/spool/ (no MLflow import in the job) that `tokenforge track sync|end` replays; `auto` is
# deferred for the default SQLite store inside the results folder and live for any other store (a server).
MODES = ("auto", "live", "deferred")
