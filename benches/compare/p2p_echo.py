"""py-libp2p's side of benches/compare/run.sh: two hosts in one process, 3
connections per peer (round_robin), concurrent 1 KiB echo streams, one new
stream per request. Prints one JSON line."""

import argparse
import json
import time

import multiaddr
import trio

from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr

PROTO = TProtocol("/peerpool-compare/echo/1.0.0")


async def read_exactly(stream, n):
    buf = b""
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


async def main(seconds: float, concurrency: int, size: int) -> None:
    config = ConnectionConfig(max_connections_per_peer=3, load_balancing_strategy="round_robin")
    a = new_host(connection_config=config)
    b = new_host(connection_config=config)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]

    async def echo(stream):
        data = await read_exactly(stream, size)
        await stream.write(data)
        await stream.close()

    async with a.run(listen_addrs=listen), b.run(listen_addrs=listen):
        b.set_stream_handler(PROTO, echo)
        info = info_from_p2p_addr(b.get_addrs()[0])
        await a.connect(info)
        # host.connect() opens one connection; the others are dialled by hand.
        swarm = a.get_network()
        while len(swarm.get_connections(info.peer_id)) < 3:
            await swarm.dial_addr(info.addrs[0], info.peer_id)
        connections = len(swarm.get_connections(info.peer_id))
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        count = 0
        errors = 0
        latencies = []
        deadline = time.monotonic() + seconds

        async def worker():
            nonlocal count, errors
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    s = await a.new_stream(info.peer_id, [PROTO])
                    await s.write(payload)
                    back = await read_exactly(s, size)
                    await s.close()
                    if back != payload:
                        errors += 1
                        continue
                    count += 1
                    latencies.append(time.monotonic() - started)
                except Exception:
                    errors += 1

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        elapsed = time.monotonic() - started
        latencies.sort()
        p50 = latencies[len(latencies) // 2] if latencies else 0
        print(json.dumps({
            "streams_per_sec": count / elapsed,
            "requests": count,
            "errors": errors,
            "p50_us": p50 * 1e6,
            "connections": connections,
            "concurrency": concurrency,
            "size": size,
        }))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--size", type=int, default=1024)
    args = p.parse_args()
    trio.run(main, args.seconds, args.concurrency, args.size)
