#!/usr/bin/env bash
# Start the control plane on a Ray head node, after `ray start --head`: the cluster files
# (ray_cluster.yaml, deploy/local-cluster.yaml) run it from head_start_ray_commands.
#
#   CONTROL_PLANE_HOST       interface the gateway binds (default 127.0.0.1: reach it through
#                            `ray attach -p 8000` or an SSH tunnel; 0.0.0.0 for a load balancer
#                            in the private network, e.g. `CONTROL_PLANE_HOST=0.0.0.0 bash ...`
#                            in head_start_ray_commands)
#   CONTROL_PLANE_PORT       the gateway's port (default 8000)
#   CONTROL_PLANE_STATE_DIR  event log and job registry (default ~/control-plane-state)
#   CONTROL_PLANE_TOKEN      the token clients present, else ~/.control_plane/token
#                            (the cluster files copy yours there; it is never in the YAML)
set -euo pipefail

HOST="${CONTROL_PLANE_HOST:-127.0.0.1}"
PORT="${CONTROL_PLANE_PORT:-8000}"
STATE_DIR="${CONTROL_PLANE_STATE_DIR:-$HOME/control-plane-state}"
LOG="$HOME/control-plane.log"
PIDFILE="$HOME/control-plane.pid"

# `ray up` run again restarts Ray: stop the control plane it served first.
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill -TERM "$(cat "$PIDFILE")"
    for _ in $(seq 30); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.5; done
fi

mkdir -p "$STATE_DIR"
# `ray down` stops Ray but knows nothing of this process: as a driver of the cluster, it ends
# once the GCS has been gone this long (Ray's default is 60 s).
export RAY_gcs_rpc_server_reconnect_timeout_s="${RAY_gcs_rpc_server_reconnect_timeout_s:-15}"
nohup control-plane serve --address auto --host "$HOST" --port "$PORT" \
    --state-dir "$STATE_DIR" >"$LOG" 2>&1 </dev/null &
echo $! >"$PIDFILE"

for _ in $(seq 120); do
    if grep -q "control plane ready" "$LOG"; then
        echo "control plane ready on port $PORT (log: $LOG)"
        exit 0
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        break
    fi
    sleep 1
done
echo "the control plane did not start; the end of $LOG:" >&2
tail -n 40 "$LOG" >&2
exit 1
