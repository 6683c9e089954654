#!/bin/sh
# Runs once in the peerpool image before the nodes start: makes an identity
# per node and writes three fully meshed configs into /shared.
set -eu
for n in a b c; do
  mkdir -p "/shared/$n"
  [ -f "/shared/$n/keys/node.key" ] || peerpool keygen --out "/shared/$n/keys" > "/shared/$n/id"
  [ -s "/shared/$n/id" ] || peerpool id --cert "/shared/$n/keys/node.crt" > "/shared/$n/id"
done
ip() { case "$1" in a) echo 172.28.0.11 ;; b) echo 172.28.0.12 ;; c) echo 172.28.0.13 ;; esac; }
for n in a b c; do
  {
    printf '[node]\nlisten = "0.0.0.0:4433"\ncert = "keys/node.crt"\nkey = "keys/node.key"\n\n'
    printf '[admin]\nlisten = "0.0.0.0:9464"\ntoken = "compose-demo-token"\n\n'
    port=7001
    for p in a b c; do
      [ "$p" = "$n" ] && continue
      printf '[[peers]]\nname = "%s"\nid = "%s"\naddr = "%s:4433"\n\n' "$p" "$(cat "/shared/$p/id")" "$(ip "$p")"
      printf '[[forward]]\nlisten = "127.0.0.1:%s"\npeer = "%s"\nservice = "echo"\n\n' "$port" "$p"
      port=$((port + 1))
    done
    printf '[[service]]\nname = "echo"\nupstream = "127.0.0.1:8080"\n'
  } > "/shared/$n/peerpool.toml"
  peerpool check --config "/shared/$n/peerpool.toml"
done
chown -R 10001:10001 /shared
