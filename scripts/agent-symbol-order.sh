#!/usr/bin/env bash
# Regenerates agent/symbol-order.txt: the functions a running agent executes in steady state, which
# agent/build.rs hands to the linker (lld --symbol-ordering-file) so that they sit together at the
# start of .text.
#
# Why: the kernel maps executable pages 64 KiB at a time around each page fault (fault-around), so
# an agent whose ~1.7 MiB of hot code is scattered over 10 MiB of .text keeps ~6 MiB of it
# resident. Clustered, the same code costs ~2 MiB (see the agent benchmark, `cargo bench --bench
# agent`, for the figures).
#
# The profile: a release agent under valgrind's callgrind (which records every function executed),
# heartbeating to a real master over mTLS, serving the calls the master's monitors and operators
# make (GetStatus, ListWorkers, GetProcessStats, a web worker started, inspected and stopped).
#
# Run it after upgrading dependencies or the toolchain (symbol names carry crate hashes; a stale
# list loses its effect without breaking the build, and tests/symbol_order.rs then fails), then
# commit the new list.
# Needs valgrind (apt-get install valgrind) and grpcurl (scripts/test.sh puts it in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }
grpcurl=$root/.venv/bin/grpcurl
[ -x "$grpcurl" ] || { echo "grpcurl not found: run scripts/test.sh once (it fills .venv)" >&2; exit 1; }

# The same invocation as `cargo build --release` at the root and as the tests and benchmarks use:
# symbol names carry crate hashes that depend on the features unified across the packages built
# together, so a list made from a `-p switchyard-agent` build would not match this one.
cargo build --release --workspace --bins
master_bin=$root/target/release/switchyard-master
agent_bin=$root/target/release/switchyard-agent

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$master_bin" ca init --pki-dir "$work/pki" >/dev/null
for spec in "master master" "node node1" "admin admin"; do
  set -- $spec
  "$master_bin" ca issue --pki-dir "$work/pki" --role "$1" --name "$2" >/dev/null
done

master_addr=127.0.0.1:19710
agent_addr=127.0.0.1:19711
"$master_bin" serve --listen "$master_addr" --data-dir "$work/data" --pki-dir "$work/pki" \
  --heartbeat-interval-ms 200 >"$work/master.log" 2>&1 &
pids+=($!)
valgrind --tool=callgrind --demangle=no --compress-strings=no \
  --callgrind-out-file="$work/callgrind.out" \
  "$agent_bin" serve --listen "$agent_addr" --master "$master_addr" --name node1 \
  --pki-dir "$work/pki" --runtime-dir "$work/run" --worker-exe "$agent_bin" >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")

call() { # service/method json
  "$grpcurl" -cacert "$work/pki/ca.pem" -cert "$work/pki/admin.pem" -key "$work/pki/admin.key" \
    -import-path proto -proto switchyard/agent/v1/node_controller.proto \
    -proto switchyard/agent/v1/native_process.proto -d "$2" "$agent_addr" "switchyard.agent.v1.$1"
}

deadline=$((SECONDS + 120))
until call NodeControllerService/GetStatus '{}' >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { cat "$work/agent.log" >&2; echo "agent did not answer" >&2; exit 1; }
  sleep 0.5
done
for _ in 1 2 3; do
  call NodeControllerService/GetStatus '{}' >/dev/null
  call NodeControllerService/ListWorkers '{}' >/dev/null
  call NativeProcessService/GetProcessStats '{"process": "controller"}' >/dev/null
done
call NodeControllerService/StartWorker '{"worker_id": "profile", "worker_type": "WORKER_TYPE_WEB"}' >/dev/null
until call NodeControllerService/GetWorker '{"worker_id": "profile"}' | grep -q WORKER_STATUS_STARTED; do
  [ $SECONDS -lt $deadline ] || { echo "worker did not start" >&2; exit 1; }
  sleep 0.2
done
call NativeProcessService/GetProcessStats '{"process": "profile"}' >/dev/null
call NodeControllerService/StopWorker '{"worker_id": "profile"}' >/dev/null
# A few more heartbeat rounds (every 200 ms) while idle.
sleep 3

kill -INT "$agent_pid"
wait "$agent_pid" || true

python3 - "$work/callgrind.out" "$agent_bin" agent/symbol-order.txt <<'EOF'
import re, sys
out, binary, dest = sys.argv[1:]
obj, names, seen = None, [], set()
for line in open(out, errors="replace"):
    if line.startswith("ob="):
        obj = line[3:].strip()
    elif line.startswith("fn=") and obj == binary:
        name = re.sub(r"'\d+$", "", line[3:].strip())  # callgrind's recursion-depth suffix
        if not name.startswith("0x") and name not in seen:
            seen.add(name)
            names.append(name)
if len(names) < 500:
    sys.exit(f"only {len(names)} functions recorded: was the agent profiled?")
open(dest, "w").write("\n".join(names) + "\n")
print(f"{dest}: {len(names)} functions")
EOF
