#!/usr/bin/env bash
# ray_microbenchmark.sh - run upstream Ray's own microbenchmark and print the
# results in the same "name value unit" form used for Fleet's benchmarks, so
# the two can be compared side by side on the same machine.
#
# It runs `ray microbenchmark` (the Ray CLI command; it starts and stops a
# local Ray instance by itself, so no cluster needs to be running) and, for
# each metric below, prints one line:
#
#     <metric_name> <value> <unit>
#
# where <value> is the mean per-second rate Ray reports (ops/s, or GB/s for
# the *_gigabytes metrics) and <metric_name> is the snake_case name used in
# Ray's release tests (derived from the names in ray/_private/ray_perf.py).
# A metric that does not appear in Ray's output is printed as
# "<metric_name> MISSING -" and makes the script exit with status 2.
#
# Usage:
#     bench/ray_microbenchmark.sh [VENV] [RAW_OUTPUT_FILE]
#
#   VENV             virtualenv with Ray installed (default: /work/ray-venv),
#                    e.g. created with:
#                        python3 -m venv /work/ray-venv
#                        /work/ray-venv/bin/pip install "ray[default]" numpy
#                    (numpy is needed by the microbenchmark but is not a
#                    dependency of recent Ray releases)
#   RAW_OUTPUT_FILE  where to keep Ray's full, unparsed output
#                    (default: a temporary file, deleted on exit)
#
# Environment:
#   RAY_BENCH_TIMEOUT  seconds before the run is killed (default: 1500)
#   TESTS_TO_RUN / TESTS_TO_SKIP are passed through to Ray (substring filters
#   on benchmark names); filtering out a benchmark makes it show as MISSING.
#   None of the "client: ..." (Ray Client) benchmarks that Ray runs at the end
#   are reported here; TESTS_TO_SKIP='client:' skips them and saves ~2 minutes.
#
# The full run takes ~10-15 minutes (each benchmark sleeps 10 s, warms up for
# 1 s and measures 4 x 2 s). Run it on an otherwise idle machine: the numbers
# are very sensitive to other CPU load. Any leftover Ray processes are stopped
# (`ray stop --force`) when the script exits; note that this stops *every*
# Ray process on the machine (it matches process names such as "raylet",
# "gcs_server" and "ray::*"), so don't run it next to a Ray cluster you want
# to keep.

set -euo pipefail

VENV="${1:-/work/ray-venv}"
RAW="${2:-}"
TIMEOUT_S="${RAY_BENCH_TIMEOUT:-1500}"

RAY="$VENV/bin/ray"
if [[ ! -x "$RAY" ]]; then
    echo "error: $RAY not found; install Ray into the virtualenv first:" >&2
    echo "  python3 -m venv $VENV && $VENV/bin/pip install 'ray[default]' numpy" >&2
    exit 1
fi
if ! "$VENV/bin/python" -c 'import ray._private.ray_perf' 2>/dev/null; then
    echo "error: cannot import ray._private.ray_perf from $VENV" \
        "(is numpy installed? $VENV/bin/pip install numpy)" >&2
    exit 1
fi

TMP_RAW=""
if [[ -z "$RAW" ]]; then
    TMP_RAW="$(mktemp)"
    RAW="$TMP_RAW"
fi

cleanup() {
    "$RAY" stop --force >/dev/null 2>&1 || true
    rm -f "${OUT_TMP:-}" "${ERR_TMP:-}"
    if [[ -n "$TMP_RAW" ]]; then rm -f "$TMP_RAW"; fi
}
trap cleanup EXIT

echo "# ray $("$VENV/bin/python" -c 'import ray; print(ray.__version__)')" >&2

# stdout (where the results are printed) and stderr (Ray's logging) are
# captured separately so log lines can never be interleaved into a result
# line; unbuffered so that partial results survive a timeout. The raw file
# gets stdout followed by stderr.
OUT_TMP="$(mktemp)"
ERR_TMP="$(mktemp)"
rc=0
PYTHONUNBUFFERED=1 timeout "$TIMEOUT_S" "$RAY" microbenchmark \
    >"$OUT_TMP" 2>"$ERR_TMP" || rc=$?
{
    cat "$OUT_TMP"
    echo "----- stderr -----"
    cat "$ERR_TMP"
} >"$RAW"
if [[ $rc -ne 0 ]]; then
    echo "warning: 'ray microbenchmark' exited with status $rc" \
        "(124 = timed out after ${TIMEOUT_S}s); parsing what it printed" >&2
fi

# metric_name|human-readable name printed by Ray (before " per second")|unit
METRICS='
single_client_tasks_sync|single client tasks sync|ops/s
single_client_tasks_async|single client tasks async|ops/s
multi_client_tasks_async|multi client tasks async|ops/s
1_1_actor_calls_sync|1:1 actor calls sync|ops/s
1_1_actor_calls_async|1:1 actor calls async|ops/s
1_1_actor_calls_concurrent|1:1 actor calls concurrent|ops/s
1_n_actor_calls_async|1:n actor calls async|ops/s
n_n_actor_calls_async|n:n actor calls async|ops/s
n_n_actor_calls_with_arg_async|n:n actor calls with arg async|ops/s
1_1_async_actor_calls_async|1:1 async-actor calls async|ops/s
single_client_put_calls|single client put calls (Plasma Store)|ops/s
single_client_get_calls|single client get calls (Plasma Store)|ops/s
single_client_put_gigabytes|single client put gigabytes|GB/s
multi_client_put_gigabytes|multi client put gigabytes|GB/s
single_client_wait_1k_refs|single client wait 1k refs|ops/s
single_client_get_object_containing_10k_refs|single client get object containing 10k refs|ops/s
placement_group_create_removal|placement group create/removal|ops/s
'

# Ray prints e.g. "single client tasks sync per second 728.1 +- 12.3".
# Match the whole name from the start of the line, so that e.g.
# "client: 1:1 actor calls sync" (Ray Client variant) is not confused with
# "1:1 actor calls sync".
missing=0
while IFS='|' read -r metric human unit; do
    [[ -z "$metric" ]] && continue
    value="$(awk -v prefix="$human per second " '
        index($0, prefix) == 1 {
            rest = substr($0, length(prefix) + 1)
            split(rest, f, " ")
            v = f[1]
        }
        END { if (v != "") print v }
    ' "$OUT_TMP")"
    if [[ -n "$value" ]]; then
        echo "$metric $value $unit"
    else
        echo "$metric MISSING -"
        missing=1
    fi
done <<<"$METRICS"

if [[ $missing -ne 0 ]]; then
    echo "warning: some metrics were missing from Ray's output" >&2
    exit 2
fi
# All wanted metrics were found; a failure in a later, unused part of the run
# (e.g. the Ray Client benchmarks) was reported above but is not fatal.
exit 0
