# Shared by start_cluster.sh and stop_cluster.sh (sourced, not run).

# The ids of processes whose command name is exactly $1 (from /proc, so procps is not needed).
pids_of() {
    local comm pid
    for comm in /proc/[0-9]*/comm; do
        pid=${comm#/proc/}; pid=${pid%/comm}
        [[ "$(cat "$comm" 2>/dev/null)" == "$1" ]] && echo "$pid"
    done
    return 0
}
