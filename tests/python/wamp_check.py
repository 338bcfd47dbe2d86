"""Drives Switchyard router workers with Autobahn|Python (asyncio), a WAMP client we did not
write, and prints what it saw as one JSON object for the Rust test to assert.

    wamp_check.py basic URL [--serializer json|msgpack]
        One router: pub/sub, RPC, application and router error URIs, an unknown realm.
    wamp_check.py fabric --publisher URL --subscriber URL [--subscriber URL ...]
                         --caller URL --callee URL [--timeout S]
        Across routers: a publish made through one URL reaches subscribers on every other;
        a call made through one reaches the callee on another. Publishes and calls are retried
        until they arrive or the timeout passes (links come up asynchronously).
"""

import argparse
import asyncio
import json
import sys
import time
import uuid

from autobahn.asyncio.wamp import ApplicationRunner, ApplicationSession
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer
from autobahn.wamp.types import PublishOptions


async def join(url, realm="realm1", serializer=None):
    loop = asyncio.get_running_loop()
    joined = loop.create_future()

    class Session(ApplicationSession):
        async def onJoin(self, details):
            if not joined.done():
                joined.set_result(self)

        def onLeave(self, details):
            if not joined.done():
                joined.set_exception(ApplicationError(details.reason, details.message))
            self.disconnect()

    serializers = {
        None: None,
        "json": [JsonSerializer()],
        "msgpack": [MsgPackSerializer()],
        "cbor": [CBORSerializer()],
    }[serializer]
    runner = ApplicationRunner(url, realm, serializers=serializers)
    await runner.run(Session, start_loop=False)
    return await asyncio.wait_for(joined, 10)


async def error_uri(coro):
    try:
        await coro
    except ApplicationError as e:
        return e.error
    return None


async def basic(args):
    a = await join(args.url, serializer=args.serializer)
    b = await join(args.url, serializer=args.serializer)
    out = {"serializer": a._transport._serializer.SERIALIZER_ID}

    got = asyncio.get_running_loop().create_future()

    def on_event(*a_, **kw):
        if not got.done():
            got.set_result({"args": list(a_), "kwargs": kw})

    await a.subscribe(on_event, "com.example.topic")
    await b.publish(
        "com.example.topic", 1, "two", k="v", options=PublishOptions(acknowledge=True)
    )
    out["event"] = await asyncio.wait_for(got, 10)

    # The publisher is excluded by default and receives its own event when it asks to.
    mine = asyncio.get_running_loop().create_future()
    await b.subscribe(lambda *x: mine.done() or mine.set_result(list(x)), "com.example.mine")
    await b.publish(
        "com.example.mine", "me", options=PublishOptions(acknowledge=True, exclude_me=False)
    )
    out["own_event"] = await asyncio.wait_for(mine, 10)

    await a.register(lambda x, y: x + y, "com.example.add")

    def fail():
        raise ApplicationError("com.example.error.oops", "it failed")

    await a.register(fail, "com.example.fail")
    out["add"] = await b.call("com.example.add", 2, 3)
    out["fail"] = await error_uri(b.call("com.example.fail"))
    out["missing"] = await error_uri(b.call("com.example.nothing"))
    out["duplicate"] = await error_uri(b.register(lambda: 0, "com.example.add"))
    out["no_realm"] = await error_uri(join(args.url, realm="nosuchrealm"))

    # A callee that leaves: its procedure is gone.
    await a.leave()
    out["after_leave"] = await error_uri(b.call("com.example.add", 1, 1))
    await b.leave()
    print(json.dumps(out))


async def fabric(args):
    topic = f"com.example.fabric.{uuid.uuid4().hex[:8]}"
    procedure = f"com.example.where.{uuid.uuid4().hex[:8]}"
    loop = asyncio.get_running_loop()
    subscribers = []
    received = []
    for i, url in enumerate(args.subscriber):
        s = await join(url)
        fut = loop.create_future()
        received.append(fut)
        await s.subscribe(
            lambda *a, _f=fut: _f.done() or _f.set_result(list(a)), topic
        )
        subscribers.append(s)
    publisher = await join(args.publisher)
    callee = await join(args.callee)
    caller = await join(args.caller)
    await callee.register(lambda x: {"echo": x, "served_by": "callee"}, procedure)

    start = time.monotonic()
    attempts = 0
    while not all(f.done() for f in received):
        if time.monotonic() - start > args.timeout:
            break
        attempts += 1
        publisher.publish(topic, "hello", attempts)
        await asyncio.wait([*received], timeout=0.1)
    events = [f.result() if f.done() else None for f in received]

    call_attempts = 0
    result = None
    while time.monotonic() - start < args.timeout:
        call_attempts += 1
        try:
            result = await caller.call(procedure, "ping")
            break
        except ApplicationError as e:
            if e.error != "wamp.error.no_such_procedure":
                result = {"error": e.error}
                break
            await asyncio.sleep(0.05)
    for s in [*subscribers, publisher, callee, caller]:
        await s.leave()
    print(
        json.dumps(
            {
                "events": events,
                "publish_attempts": attempts,
                "call": result,
                "call_attempts": call_attempts,
            }
        )
    )


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("basic")
    b.add_argument("url")
    b.add_argument("--serializer", choices=["json", "msgpack", "cbor"])
    f = sub.add_parser("fabric")
    f.add_argument("--publisher", required=True)
    f.add_argument("--subscriber", action="append", required=True)
    f.add_argument("--caller", required=True)
    f.add_argument("--callee", required=True)
    f.add_argument("--timeout", type=float, default=15)
    args = p.parse_args()
    asyncio.run({"basic": basic, "fabric": fabric}[args.mode](args))


if __name__ == "__main__":
    sys.exit(main())
