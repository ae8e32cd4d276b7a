#!/usr/bin/env bash
# A scheduled reprocessing run of one job config against the latest snapshot of its inputs.
#
#   scripts/reprocess.sh CONFIG [LOG]
#
# - Inputs given by branch resolve to that branch's latest snapshot at run time; the run key
#   hashes the config, those snapshot ids and the spatialflow version, so when nothing changed
#   since the last run `spatialflow run` finds its commit and does nothing: the run is skipped.
# - Everything is appended to LOG (default: logs/reprocess-<config name>.log next to CONFIG's
#   folder, or $SPATIALFLOW_LOG_DIR), one timestamped line per event plus the command's output.
# - Exit status: 0 when committed or skipped, the command's non-zero status on failure, 75 when
#   another run of the same config still holds the lock (flock), so runs never overlap.
# - SPATIALFLOW (default: "spatialflow") is the command to call, e.g. "uv run spatialflow".
#
# cron (every night at 02:15):
#   15 2 * * *  cd /srv/spatialflow && scripts/reprocess.sh configs/aggregate.yaml
# systemd: a oneshot service running this script plus a timer with OnCalendar=*-*-* 02:15:00;
# a failed run then shows in `systemctl --failed` and in the log.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    [[ $# -ge 1 ]] && exit 0 || exit 2
fi

config="$1"
if [[ ! -f "$config" ]]; then
    echo "reprocess: no config file $config" >&2
    exit 2
fi
name="$(basename "${config%.*}")"
log_dir="${SPATIALFLOW_LOG_DIR:-$(cd "$(dirname "$config")" && pwd)/logs}"
log="${2:-$log_dir/reprocess-$name.log}"
mkdir -p "$(dirname "$log")"
read -r -a cmd <<< "${SPATIALFLOW:-spatialflow}"

stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }
say() { echo "$(stamp) reprocess[$name]: $*" | tee -a "$log"; }

exec 9>"$log.lock"
if ! flock -n 9; then
    say "another run of $config is still going; not starting a second one"
    exit 75
fi

say "start: ${cmd[*]} run $config"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
set +e
"${cmd[@]}" run "$config" >"$out" 2>&1
status=$?
set -e
cat "$out" >> "$log"
if [[ $status -ne 0 ]]; then
    say "FAILED with exit status $status (see the output above in $log)"
    exit "$status"
fi
if grep -q "Nothing to do" "$out"; then
    say "skipped: the inputs are unchanged since the last run"
else
    say "done: $(grep -E '^Committed' "$out" | tail -n 1)"
fi
