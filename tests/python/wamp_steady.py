"""A WAMP client pair that keeps publishing and calling (Autobahn|Python, asyncio) while a
Rust test drains or restarts router workers, and prints what it saw as one JSON object.

    wamp_steady.py --publisher URL --subscriber URL --caller URL --callee URL --stop FILE
                   [--timeout S]

It first waits until a publish arrives and a call answers (the links come up asynchronously),
then publishes and calls in a loop until FILE exists (or the timeout passes): every publish must
arrive and every call must answer.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import uuid

from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions

from wamp_check import join


async def steady(args):
    topic = f"com.example.steady.{uuid.uuid4().hex[:8]}"
    procedure = f"com.example.steady.{uuid.uuid4().hex[:8]}"
    received = set()
    sub = await join(args.subscriber)
    await sub.subscribe(lambda n: received.add(n), topic)
    callee = await join(args.callee)
    await callee.register(lambda x: x, procedure)
    pub = await join(args.publisher)
    caller = await join(args.caller)

    # Warm-up: the links between the routers.
    start = time.monotonic()
    n = 0
    ready = False
    while time.monotonic() - start < 15:
        n -= 1
        pub.publish(topic, n)
        await asyncio.sleep(0.05)
        if n in received:
            try:
                await caller.call(procedure, 0)
                ready = True
                break
            except ApplicationError:
                pass
    out = {"ready": ready, "published": 0, "calls": 0, "call_failures": 0, "errors": []}
    n = 0
    while ready and not os.path.exists(args.stop) and time.monotonic() - start < args.timeout:
        n += 1
        try:
            await pub.publish(topic, n, options=PublishOptions(acknowledge=True))
            out["published"] += 1
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            out["errors"].append(f"publish: {e!r}")
        try:
            if await caller.call(procedure, n) == n:
                out["calls"] += 1
            else:
                out["call_failures"] += 1
        except Exception as e:  # noqa: BLE001
            out["call_failures"] += 1
            out["errors"].append(f"call: {e!r}")
        await asyncio.sleep(0.01)
    # The last events may still be on their way over a link.
    deadline = time.monotonic() + 5
    want = set(range(1, n + 1)) if ready else set()
    while not want <= received and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    out["received"] = len(want & received)
    out["errors"] = out["errors"][:5]
    for s in [sub, callee, pub, caller]:
        await s.leave()
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--publisher", required=True)
    p.add_argument("--subscriber", required=True)
    p.add_argument("--caller", required=True)
    p.add_argument("--callee", required=True)
    p.add_argument("--stop", required=True)
    p.add_argument("--timeout", type=float, default=120)
    asyncio.run(steady(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
