#!/usr/bin/env python3
"""A Herald client written from `proto/` alone, in another language than Herald's own.

The test `interop::a_python_grpc_client_generated_from_proto_drives_herald` generates the
Python code with Google's protoc and the gRPC Python plugin, then runs this script against a
real control plane and agent. It creates a subscription, tails the delivery log (a
server stream), emits an event once the agent has the subscription, reads the attempt that
delivered it, and tries two bad calls. It prints what it saw as one JSON object; the Rust
test checks it, and checks the webhook the receiver got.

Usage: client.py CONTROL_PLANE_ADDR AGENT_ADDR RECEIVER_URL
"""

import json
import queue
import sys
import threading
import time

import grpc

from herald.v1 import herald_pb2 as pb
from herald.v1 import herald_pb2_grpc as rpc

TIMEOUT = 10
TENANT = "shop-py"


def code_of(call):
    """The status code name a call ends with ("OK" when it succeeds)."""
    try:
        call()
        return "OK"
    except grpc.RpcError as err:
        return err.code().name


def main():
    control_plane, agent, url = sys.argv[1:4]
    seen = {}
    with grpc.insecure_channel(control_plane) as cp, grpc.insecure_channel(agent) as ag:
        subscriptions = rpc.SubscriptionsStub(cp)
        deliveries = rpc.DeliveriesStub(cp)
        events = rpc.EventsStub(ag)

        created = subscriptions.CreateSubscription(
            pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    tenant=TENANT, url=url, event_types=["order.*"]
                )
            ),
            timeout=TIMEOUT,
        )
        seen["subscription_id"] = created.id
        seen["secret"] = created.secrets[0].secret

        # The log's tail, read on a thread: every attempt stored from now on.
        tail = deliveries.TailAttempts(
            pb.TailAttemptsRequest(
                filter=pb.AttemptFilter(subscription_id=created.id)
            )
        )
        attempts = queue.Queue()

        def read_tail():
            try:
                for attempt in tail:
                    attempts.put(attempt)
            except grpc.RpcError:
                pass  # cancelled below

        reader = threading.Thread(target=read_tail, daemon=True)
        reader.start()

        # The agent learns of the subscription from the control plane's config stream.
        deadline = time.monotonic() + 20
        while True:
            emitted = events.Emit(
                pb.EmitRequest(
                    event=pb.Event(
                        tenant=TENANT,
                        type="order.created",
                        payload=b'{"order_id": 7, "total": "19.90"}',
                    )
                ),
                timeout=TIMEOUT,
            )
            if emitted.matched == 1:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the agent never matched the new subscription")
            time.sleep(0.05)
        seen["event_id"] = emitted.event_id

        attempt = attempts.get(timeout=20)
        tail.cancel()
        seen["attempt"] = {
            "event_id": attempt.event_id,
            "status_code": attempt.status_code,
            "outcome": pb.Outcome.Name(attempt.outcome),
        }

        seen["emit_without_type"] = code_of(
            lambda: events.Emit(
                pb.EmitRequest(event=pb.Event(tenant=TENANT, payload=b"{}")),
                timeout=TIMEOUT,
            )
        )
        seen["get_unknown_subscription"] = code_of(
            lambda: subscriptions.GetSubscription(
                pb.GetSubscriptionRequest(id="sub_does_not_exist"), timeout=TIMEOUT
            )
        )
        # A message over the servers' limit (4 MiB), to each server.
        over = 5 * 1024 * 1024
        seen["emit_over_the_limit"] = code_of(
            lambda: events.Emit(
                pb.EmitRequest(
                    event=pb.Event(
                        tenant=TENANT,
                        type="order.created",
                        payload=b'"' + b"x" * over + b'"',
                    )
                ),
                timeout=TIMEOUT,
            )
        )
        seen["create_over_the_limit"] = code_of(
            lambda: subscriptions.CreateSubscription(
                pb.CreateSubscriptionRequest(
                    subscription=pb.Subscription(
                        tenant=TENANT,
                        url=url,
                        event_types=["order.*"],
                        description="x" * over,
                    )
                ),
                timeout=TIMEOUT,
            )
        )
        # A burst: 200 concurrent batches of 100 KB on one channel, 20 MB in all, five times
        # the agent's budget of request bytes held at once. The calls beyond it wait their
        # turn; each is answered OK. (The type matches no subscription: nothing is sent.)
        batch = pb.EmitBatchRequest(
            events=[
                pb.Event(
                    tenant=TENANT,
                    type="invoice.created",
                    payload=b'{"padding": "' + b"x" * (10 * 1024) + b'"}',
                )
                for _ in range(10)
            ]
        )
        calls = [events.EmitBatch.future(batch, timeout=TIMEOUT) for _ in range(200)]
        codes = [code_of(call.result) for call in calls]
        seen["burst"] = {"calls": len(calls), "ok": codes.count("OK"), "codes": sorted(set(codes))}
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
