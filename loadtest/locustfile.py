"""Locust load test for tviz: gRPC users for chat, shared-prefix, cached and inspector traffic.

    locust -f loadtest/locustfile.py --host 127.0.0.1:50050 --headless -u 8 -r 2 -t 60s
    tviz loadtest --duration 60s --users 8          (the same, with reports under loadtest/reports)

Environment: TVIZ_LOADTEST_INSPECTOR (host:port of the inspector; its users are skipped when
unset), TVIZ_API_KEY (sent as x-api-key). Each RPC is reported twice: the whole stream under its
name, and the time to the first token under "<name> TTFT".
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

# gRPC must cooperate with gevent's event loop before any channel exists.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
from locust import User, between, events, task  # noqa: E402

from tviz.v1 import generation_pb2 as g  # noqa: E402
from tviz.v1 import generation_pb2_grpc, inspector_pb2, inspector_pb2_grpc  # noqa: E402

MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
API_KEY = os.environ.get("TVIZ_API_KEY")
METADATA = (("x-api-key", API_KEY),) if API_KEY else ()
SYSTEM = (
    "You are the support assistant of a hardware store. Answer in one or two sentences, name the "
    "aisle, and suggest one related product. " * 4
)
QUESTIONS = [
    "Where are the screws?", "Do you sell paint?", "I need a hammer.", "Where is the garden hose?",
    "Which glue works on wood?", "Do you cut keys?", "I need light bulbs.", "Where are ladders?",
]  # fmt: skip


def fire(user: User, name: str, start: float, length: int, exc: BaseException | None) -> None:
    user.environment.events.request.fire(
        request_type="grpc", name=name, response_time=(time.perf_counter() - start) * 1000,
        response_length=length, exception=exc, context={},
    )  # fmt: skip


class GenerationUser(User):
    abstract = True
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.host, options=OPTIONS)
        self.stub = generation_pb2_grpc.GenerationStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def generate(self, name: str, request: g.GenerateRequest) -> None:
        start = time.perf_counter()
        tokens, first = 0, False
        try:
            for chunk in self.stub.Generate(request, metadata=METADATA, timeout=120):
                if chunk.token_ids and not first:
                    first = True
                    fire(self, f"{name} TTFT", start, 0, None)
                tokens += len(chunk.token_ids)
            fire(self, name, start, tokens, None)
        except grpc.RpcError as exc:
            fire(self, name, start, tokens, exc)


def chat(messages: list[tuple[str, str]], **sampling: Any) -> g.ChatMessages:
    return g.ChatMessages(messages=[g.ChatMessage(role=r, content=c) for r, c in messages])


class ChatUser(GenerationUser):
    """Sampled chat: never cacheable, exercises routing and the engine."""

    weight = 3

    @task
    def sampled_chat(self) -> None:
        req = g.GenerateRequest(
            chat=chat([("user", random.choice(QUESTIONS))]),
            sampling=g.SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24),
        )
        self.generate("Generate chat", req)


class SharedPrefixUser(GenerationUser):
    """A long shared system prompt: prefix_affinity and vLLM's prefix cache at work."""

    weight = 2

    @task
    def shared_prefix(self) -> None:
        req = g.GenerateRequest(
            chat=chat([("system", SYSTEM), ("user", random.choice(QUESTIONS))]),
            sampling=g.SamplingParams(temperature=0.0, max_tokens=16),
            cache=g.CACHE_MODE_BYPASS,
        )
        self.generate("Generate shared-prefix", req)


class CachedUser(GenerationUser):
    """Repeated deterministic requests: the gateway's response cache answers."""

    weight = 2

    @task
    def cached(self) -> None:
        req = g.GenerateRequest(
            chat=chat([("user", random.choice(QUESTIONS[:3]))]),
            sampling=g.SamplingParams(temperature=0.0, max_tokens=16),
        )
        self.generate("Generate cached", req)


class InspectorUser(User):
    """Attention dumps from the inspector (skipped unless TVIZ_LOADTEST_INSPECTOR is set)."""

    weight = 1
    wait_time = between(0.5, 2.0)
    target = os.environ.get("TVIZ_LOADTEST_INSPECTOR", "")

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.target, options=OPTIONS)
        self.stub = inspector_pb2_grpc.InspectorStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task(3)
    def dump(self) -> None:
        req = inspector_pb2.InspectRequest(
            input=inspector_pb2.ModelInput(prompt=random.choice(QUESTIONS)),
            layers=[random.randrange(30)], taps=["attn.pattern"],
        )  # fmt: skip
        start = time.perf_counter()
        size = 0
        try:
            for chunk in self.stub.Inspect(req, metadata=METADATA, timeout=120):
                if chunk.HasField("tensor"):
                    size += len(chunk.tensor.tensor.data)
            fire(self, "Inspect attention", start, size, None)
        except grpc.RpcError as exc:
            fire(self, "Inspect attention", start, size, exc)

    @task(1)
    def profile(self) -> None:
        req = inspector_pb2.ProfileRequest(
            input=inspector_pb2.ModelInput(prompt=random.choice(QUESTIONS)), repeats=1
        )
        start = time.perf_counter()
        try:
            self.stub.Profile(req, metadata=METADATA, timeout=120)
            fire(self, "Profile", start, 0, None)
        except grpc.RpcError as exc:
            fire(self, "Profile", start, 0, exc)


if not InspectorUser.target:
    InspectorUser.weight = 0
    InspectorUser.abstract = True


@events.init.add_listener
def _announce(environment: Any, **_: Any) -> None:
    users = [
        u.__name__
        for u in (ChatUser, SharedPrefixUser, CachedUser, InspectorUser)
        if not u.abstract
    ]
    print(f"tviz load test: {', '.join(users)} against {environment.host}")
