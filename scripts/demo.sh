#!/usr/bin/env bash
# The main job, end to end on this machine: check it, bring up the lab, record 10 pod starts,
# show their critical chains, write the HTML report and a Jaeger trace file, and take the lab
# down again (also on failure or Ctrl-C). Output lands in reports/ (override: DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

sp=.venv/bin/startprof
out=${DEMO_DIR:-reports}
pods=${DEMO_PODS:-10}
stamp=$(date +%Y%m%d-%H%M%S)
recording="$out/demo-$stamp.arrows"
report="$out/demo-$stamp.html"
jaeger="$out/demo-$stamp.jaeger.json"
mkdir -p "$out"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "startprof doctor"
$sp doctor

step "startprof lab up"
if $sp lab status >/dev/null 2>&1; then
	started_lab=0
else
	started_lab=1
	trap '$sp lab down >/dev/null || true' EXIT
fi
$sp lab up

step "startprof record -o $recording -- startprof lab run --pods $pods"
$sp record -o "$recording" -- $sp lab run --pods "$pods"

step "startprof analyze $recording --top 3"
$sp analyze "$recording" --top 3

step "startprof report $recording -o $report"
$sp report "$recording" -o "$report"

step "startprof export $recording --jaeger-json $jaeger"
$sp export "$recording" --jaeger-json "$jaeger"

if [ "$started_lab" = 1 ]; then
	step "startprof lab down"
	$sp lab down
	trap - EXIT
fi

step "done"
echo "recording:   $recording"
echo "report:      $report   (open it in any browser, offline)"
echo "jaeger json: $jaeger   (Jaeger UI: Search > Upload JSON)"
