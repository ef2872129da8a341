#!/usr/bin/env bash
# Stops the single-node SLURM cluster of tests/workflow/slurm/start_cluster.sh: slurmd, then slurmctld. munged is left
# running (other services may use it). Queued and running jobs are lost with the daemons; slurmctld keeps its
# state in /var/spool/slurmctld, so a later start_cluster.sh brings the same cluster back. Nothing calls this
# automatically: it is for users who are done trying the SLURM profile.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"

uid=$(id -u)
if [[ "$uid" -ne 0 ]]; then
    echo "skip: stopping the SLURM cluster needs root (uid $uid)"
    exit 77
fi

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stopped=()
for name in slurmd slurmctld; do
    pids=$(pids_of "$name")
    [[ -n "$pids" ]] || continue
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in $(seq 60); do [[ -z "$(pids_of "$name")" ]] && break; sleep 0.5; done
    [[ -z "$(pids_of "$name")" ]] || { echo "error: $name did not stop within 30 s" >&2; exit 1; }
    stopped+=("$name")
done
if (( ${#stopped[@]} )); then
    echo "slurm cluster stopped: ${stopped[*]} (munged left running)"
else
    echo "slurm cluster was not running (munged left as it is)"
fi
