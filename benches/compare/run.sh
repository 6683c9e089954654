#!/usr/bin/env bash
# Scenario 7: peerpool against the seed system, py-libp2p's own multiple
# connections per peer, on the same workload in the same run: two nodes in
# one process, 3 connections per peer, round_robin, a new stream per 1 KiB
# echo request, 16 concurrent requests.
#
#   bash benches/compare/run.sh [SECONDS]
#
# Needs the PyPI registry (it installs libp2p into a venv under target/), so
# CI does not run it; its output goes into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-10}"
venv=target/compare-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet "libp2p==0.8.1"
echo "py-libp2p $("$venv/bin/pip" show libp2p | sed -n 's/^Version: //p'), ${seconds}s..."
py=$("$venv/bin/python" benches/compare/p2p_echo.py --seconds "$seconds" --concurrency 16 --size 1024 | tail -n 1)
echo "peerpool (cargo bench --bench load -- compare)..."
PEERPOOL_COMPARE_SECONDS="$seconds" cargo bench --quiet --bench load -- compare > target/compare-peerpool.txt 2>&1
python3 - "$py" <<'PY'
import json, sys
py = json.loads(sys.argv[1])
records = json.load(open("target/peerpool-bench.json"))["records"]
pp = next(r for r in records if r["scenario"] == "compare" and r["name"].startswith("pool"))
raw = next(r for r in records if r["scenario"] == "compare" and r["name"].startswith("raw"))
print(f"{'':<34} {'streams/s':>10} {'p50 us':>9}")
print(f"{'py-libp2p 0.8.1 (TCP, 3 conns)':<34} {py['streams_per_sec']:>10.0f} {py['p50_us']:>9.0f}")
print(f"{'peerpool (QUIC, 3 conns)':<34} {pp['ops_per_sec']:>10.0f} {pp['p50_us']:>9.0f}")
print(f"{'raw quinn (1 conn)':<34} {raw['ops_per_sec']:>10.0f} {raw['p50_us']:>9.0f}")
print(f"peerpool / py-libp2p: {pp['ops_per_sec'] / py['streams_per_sec']:.0f}x streams/s "
      f"(py-libp2p: {py['connections']} connections, {py['errors']} errors)")
PY
