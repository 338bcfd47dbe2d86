"""Autobahn|Python load for `cargo bench --bench wamp`: pub/sub events/s and RPC calls/s through
one WAMP router, with the receiving side (subscriber, callee) in its own process so client CPU
is not shared between the two ends.

    wamp_bench.py URL [--seconds S] [--window N] [--serializer json|msgpack]

Prints one JSON object: {"events_per_s": ..., "calls_per_s": ...}.
"""

import argparse
import asyncio
import json
import multiprocessing
import time

from autobahn.asyncio.wamp import ApplicationRunner, ApplicationSession
from autobahn.wamp.serializer import JsonSerializer, MsgPackSerializer
from autobahn.wamp.types import PublishOptions

TOPIC = "bench.topic"
PROCEDURE = "bench.echo"


async def join(url, serializer):
    loop = asyncio.get_running_loop()
    joined = loop.create_future()

    class Session(ApplicationSession):
        async def onJoin(self, details):
            joined.set_result(self)

    ser = {"json": JsonSerializer, "msgpack": MsgPackSerializer}[serializer]()
    await ApplicationRunner(url, "realm1", serializers=[ser]).run(Session, start_loop=False)
    return await asyncio.wait_for(joined, 10)


def receiver(url, serializer, ready, results, stop):
    """The subscriber and callee: counts events until told to stop."""

    async def run():
        s = await join(url, serializer)
        count = 0

        def on_event(*args):
            nonlocal count
            count += 1

        await s.subscribe(on_event, TOPIC)
        await s.register(lambda x: x, PROCEDURE)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        # Drain what is still in flight.
        last = -1
        while last != count:
            last = count
            await asyncio.sleep(0.2)
        results.put(count)
        await s.leave()

    asyncio.run(run())


async def drive(args):
    s = await join(args.url, args.serializer)
    window = asyncio.Semaphore(args.window)

    async def one(coro):
        try:
            await coro
        finally:
            window.release()

    # Pub/sub: acknowledged publishes, `window` in flight; the subscriber counts deliveries.
    start = time.monotonic()
    tasks = set()
    while time.monotonic() - start < args.seconds:
        await window.acquire()
        t = asyncio.ensure_future(
            one(s.publish(TOPIC, "x" * 32, options=PublishOptions(acknowledge=True)))
        )
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    pub_elapsed = time.monotonic() - start

    # RPC: `window` calls in flight.
    calls = 0
    start = time.monotonic()
    tasks = set()

    async def call():
        nonlocal calls
        await s.call(PROCEDURE, "x" * 32)
        calls += 1

    while time.monotonic() - start < args.seconds:
        await window.acquire()
        t = asyncio.ensure_future(one(call()))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    rpc_elapsed = time.monotonic() - start
    await s.leave()
    return pub_elapsed, calls / rpc_elapsed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--serializer", choices=["json", "msgpack"], default="json")
    args = p.parse_args()
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    results = multiprocessing.Queue()
    child = multiprocessing.Process(
        target=receiver, args=(args.url, args.serializer, ready, results, stop)
    )
    child.start()
    if not ready.wait(15):
        raise SystemExit("the receiver did not join")
    pub_elapsed, calls_per_s = asyncio.run(drive(args))
    stop.set()
    events = results.get(timeout=15)
    child.join(15)
    print(json.dumps({"events_per_s": events / pub_elapsed, "calls_per_s": calls_per_s}))


if __name__ == "__main__":
    main()
