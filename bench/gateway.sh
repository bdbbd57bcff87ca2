#!/usr/bin/env bash
# Gateway benchmark. In one run, for the same upstream (the fake ComfyUI, release build) reached directly, through
# Orchestrator and through nginx (Debian's, when installed), prints requests/s and p50/p99 latency of
# GET /system_stats (the recorded 720-byte body); then Orchestrator's peak RSS while 1 GiB streams through it.
#
#   bench/gateway.sh                      # 16 connections, 3 rounds of 10 s per target, medians printed
#   CONNS=64 DURATION=30s ROUNDS=5 bench/gateway.sh
#
# A 2-core machine shared by wrk, the upstream and the proxy is noisy (±15% between runs of the same target), so
# the targets take turns, round after round, and the median of the rounds is printed for each.
#
# Needs wrk (apt-get install wrk) and optionally nginx (apt-get install nginx) and curl.
# Orchestrator and nginx both log every request to a file, as they would in use.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-16}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
UPSTREAM_PORT=${UPSTREAM_PORT:-18188}
ORCH_PORT=${ORCH_PORT:-13000}
NGINX_PORT=${NGINX_PORT:-13080}

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }

cargo build --release --quiet -p orchestrator -p testkit --bins
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # url
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no answer from $1" >&2; exit 1
}

target/release/fake-comfyui "127.0.0.1:$UPSTREAM_PORT" >"$work/fake.log" 2>&1 &
pids+=($!)
ORCH_BIND="127.0.0.1:$ORCH_PORT" COMFY_URL="http://127.0.0.1:$UPSTREAM_PORT" DATA_DIR="$work/data" LOG_FORMAT=json \
  target/release/orchestrator serve >"$work/orchestrator.log" 2>&1 &
orch_pid=$!
pids+=($orch_pid)
wait_for "http://127.0.0.1:$UPSTREAM_PORT/system_stats"
wait_for "http://127.0.0.1:$ORCH_PORT/api/comfy/system_stats"

targets=("direct http://127.0.0.1:$UPSTREAM_PORT/system_stats"
         "orchestrator http://127.0.0.1:$ORCH_PORT/api/comfy/system_stats")
if command -v nginx >/dev/null; then
  cat >"$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log $work/nginx-access.log;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  upstream comfy { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /api/comfy/ {
      proxy_pass http://comfy/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
CONF
  nginx -c "$work/nginx.conf" -g 'daemon on;'
  wait_for "http://127.0.0.1:$NGINX_PORT/api/comfy/system_stats"
  targets+=("nginx http://127.0.0.1:$NGINX_PORT/api/comfy/system_stats")
else
  echo "(nginx not installed: apt-get install nginx to compare)"
fi

echo "GET /system_stats, $CONNS connections, $THREADS wrk threads, $ROUNDS rounds of $DURATION per target, $(nproc) cores"
to_ms() { # wrk prints 512.00us, 1.20ms or 2.00s
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
for entry in "${targets[@]}"; do wrk -t1 -c4 -d1s "${entry#* }" >/dev/null; done # warm the pools
for round in $(seq 1 "$ROUNDS"); do
  for entry in "${targets[@]}"; do
    name=${entry%% *}; url=${entry#* }
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out")
    [ -n "$errors" ] && echo "$name round $round: $errors" >&2
    echo "$rps $p50 $p99" >>"$work/$name.rounds"
    printf '  round %d %-13s %10s req/s  p50 %s ms  p99 %s ms\n' "$round" "$name" "$rps" "$p50" "$p99"
  done
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '%-13s %12s %10s %10s   (medians of %d rounds)\n' target "requests/s" "p50 ms" "p99 ms" "$ROUNDS"
for entry in "${targets[@]}"; do
  name=${entry%% *}
  printf '%-13s %12s %10s %10s\n' "$name" \
    "$(cut -d' ' -f1 "$work/$name.rounds" | median)" \
    "$(cut -d' ' -f2 "$work/$name.rounds" | median)" \
    "$(cut -d' ' -f3 "$work/$name.rounds" | median)"
done
if [ -f "$work/nginx.rounds" ]; then
  awk -v o="$(cut -d' ' -f1 "$work/orchestrator.rounds" | median)" -v n="$(cut -d' ' -f1 "$work/nginx.rounds" | median)" \
    'BEGIN { printf "orchestrator / nginx requests/s: %.1f%%\n", 100 * o / n }'
fi

rss() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$orch_pid/status"; }
before=$(rss VmHWM)
start=$(date +%s.%N)
bytes=$(curl -fsS -o /dev/null -w '%{size_download}' \
  "http://127.0.0.1:$ORCH_PORT/api/comfy/view?filename=large.bin&size=1073741824")
end=$(date +%s.%N)
after=$(rss VmHWM)
awk -v b="$bytes" -v s="$start" -v e="$end" -v before="$before" -v after="$after" 'BEGIN {
  printf "1 GiB through Orchestrator: %d bytes in %.2f s (%.0f MiB/s); peak RSS %.1f MiB before, %.1f MiB after (growth %.1f MiB)\n",
    b, e - s, b / 1048576 / (e - s), before / 1024, after / 1024, (after - before) / 1024 }'
