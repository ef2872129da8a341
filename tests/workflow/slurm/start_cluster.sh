#!/usr/bin/env bash
# A single-node SLURM cluster on this host (slurmctld + slurmd + munged), for tests/workflow/test_slurm.py and for trying
# `--workflow-profile workflow/profiles/slurm` on a workstation: `sudo tests/workflow/slurm/start_cluster.sh`.
#
# Idempotent: installs slurm-wlm and munge only when they are missing, writes /etc/slurm/slurm.conf only when it
# differs (restarting the daemons that run with the old one), starts only what is not running, then waits until
# the node takes jobs. Exit 77 (automake's "skip" code; tests/workflow/test_slurm.py skips on it) when it cannot run here:
# not root, SLURM missing and apt-get unable to install it, or a slurm.conf this script did not write.
# tests/workflow/slurm/stop_cluster.sh stops the SLURM daemons again.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
SLURM_CONF=/etc/slurm/slurm.conf
PARTITION=debug
CLUSTER=tokenforge
MEMORY_MARGIN_MB=2048  # left to the OS and the daemons; slurmd drains a node whose RealMemory exceeds what it finds

skip() { echo "skip: $*"; exit 77; }
die() { echo "error: $*" >&2; exit 1; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
running() { [[ -n "$(pids_of "$1")" ]]; }

# Stop a daemon by the ids of its processes and wait (up to 30 s) until it is gone.
stop_daemon() {
    local name=$1 pid i
    for pid in $(pids_of "$name"); do kill -TERM "$pid" 2>/dev/null || true; done
    for i in $(seq 60); do running "$name" || return 0; sleep 0.5; done
    die "$name did not stop within 30 s"
}

uid=$(id -u)
[[ "$uid" -eq 0 ]] || skip "starting a SLURM cluster needs root (uid $uid)"
# never touch the SLURM or munge set-up of a real cluster this host may belong to
# The path as it was when this script first wrote slurm.conf files: a changed marker would disown them.
marker="# Written by tokenforge tests/slurm/start_cluster.sh"
if [[ -f "$SLURM_CONF" ]] && [[ "$(head -n 1 "$SLURM_CONF")" != "$marker"* ]]; then
    skip "$SLURM_CONF was not written by this script (a real cluster's?); move it away to start a test cluster here"
fi

# 1. packages, only when missing
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || skip "slurmctld, slurmd or munged is missing and there is no apt-get to install them"
    echo "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q slurm-wlm munge; then
        apt-get update -q || true
        apt-get install -y -q slurm-wlm munge || skip "apt-get could not install slurm-wlm and munge (see above)"
    fi
fi

# 2. munge: key, directories, daemon (as user munge)
id munge >/dev/null 2>&1 || die "the munge package did not create the user munge"
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
munge_state=running
if ! munge_ok; then
    for i in $(seq 20); do running munged || break; sleep 0.5; done  # give one that is stopping time to go
    if ! running munged; then
        rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
        runuser -u munge -- munged
        munge_state=started
    fi
    for i in $(seq 20); do munge_ok && break; sleep 0.5; done
    munge_ok || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf: this host as controller and only node, one default partition, no accounting
host=$(hostname -s)
cpus=$(nproc)
mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
mem_mb=$(( mem_kb / 1024 - MEMORY_MARGIN_MB ))
(( mem_mb > 0 )) || die "too little memory for a SLURM node (MemTotal ${mem_kb} kB)"
conf=$(cat <<EOF
$marker: a single-node cluster on $host (rewritten when it differs).
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue for 10 minutes: the executor plugin polls with squeue
MinJobAge=600
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
install -d -m 0755 /etc/slurm /var/log/slurm
install -d -m 0700 /var/spool/slurmctld /var/spool/slurmd
conf_state=unchanged
if [[ ! -f "$SLURM_CONF" ]] || [[ "$(cat "$SLURM_CONF")" != "$conf" ]]; then
    printf '%s\n' "$conf" > "$SLURM_CONF.tmp"
    chmod 0644 "$SLURM_CONF.tmp"
    mv "$SLURM_CONF.tmp" "$SLURM_CONF"
    conf_state=written
    # daemons running with the old configuration: restart them with this one
    if running slurmd || running slurmctld; then
        echo "slurm.conf changed: restarting slurmd and slurmctld"
        stop_daemon slurmd
        stop_daemon slurmctld
        conf_state=rewritten
    fi
fi

# 4. daemons
ctld_state=running
if ! running slurmctld; then
    slurmctld || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
    ctld_state=started
fi
for i in $(seq 40); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer (see /var/log/slurm/slurmctld.log)"
slurmd_state=running
if ! running slurmd; then
    slurmd || die "slurmd did not start (see /var/log/slurm/slurmd.log)"
    slurmd_state=started
fi

# 5. wait until the node takes jobs; a down or drained node is resumed
state=unknown
for i in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -n 1)
    case "$state" in
        idle | mix | alloc | comp) break ;;
        down* | drain* | drng* | fail*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
case "$state" in
    idle | mix | alloc | comp) ;;
    *) die "node $host is '$state' after 60 s: $(sinfo -h -R 2>/dev/null | head -n 1) (see /var/log/slurm/slurmd.log)" ;;
esac

echo "slurm cluster '$CLUSTER' up: node $host ($cpus CPUs, $mem_mb MB) $state in partition $PARTITION (default);" \
    "slurm.conf $conf_state; munged $munge_state, slurmctld $ctld_state, slurmd $slurmd_state"
