"""Run in the `deepgram-sdk` environment: connect with the SDK as an app does, through its
own transport hook (``transport_factory``, its documented test double), send audio and the
control messages, and receive the server messages earshot wrote: parsed by the SDK's socket
client, and validated strictly by its pydantic models.

stdin: {"messages": [text messages earshot sent, in order]}
stdout: {"url", "headers", "sent": [what the SDK sent], "parsed": [...], "strict": [...]}
"""

import json
import sys
import typing

from deepgram import DeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.socket_client import V1SocketClientResponse

PAYLOAD = json.load(sys.stdin)
CAPTURED = {"url": None, "headers": None, "sent": []}


class ReplayTransport:
    """Gives the SDK earshot's messages, records what the SDK sends."""

    def __init__(self, url, headers):
        CAPTURED["url"] = url
        CAPTURED["headers"] = dict(headers)
        self.queue = list(PAYLOAD["messages"])

    def send(self, data):
        if isinstance(data, bytes | bytearray):
            CAPTURED["sent"].append({"binary": len(data)})
        else:
            CAPTURED["sent"].append({"text": data})

    def recv(self):
        if not self.queue:
            raise StopIteration
        return self.queue.pop(0)

    def __iter__(self):
        while self.queue:
            yield self.queue.pop(0)

    def close(self):
        pass


def strict(message):
    """Validate with the model the message's type names, as pydantic does (no coercion
    of missing fields)."""
    by_type = {}
    for cls in typing.get_args(V1SocketClientResponse):
        field = cls.model_fields.get("type")
        if field is not None and field.default:
            by_type[field.default] = cls
    obj = json.loads(message)
    cls = by_type.get(obj.get("type"))
    if cls is None:
        return {"type": obj.get("type"), "model": None}
    model = cls.model_validate(obj)
    return {"type": obj["type"], "model": cls.__name__,
            "dump": json.loads(model.model_dump_json(exclude_none=True))}


def main():
    earshot = DeepgramClientEnvironment(  # how an app points the SDK at earshot
        base="http://earshot.local:8000", production="ws://earshot.local:8000",
        agent="ws://earshot.local:8000", agent_rest="http://earshot.local:8000")
    client = DeepgramClient(api_key="earshot-token", environment=earshot,
                            transport_factory=ReplayTransport)
    parsed = []
    with client.listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate=16000, channels=1,
            language="en-US", interim_results="true", vad_events="true", endpointing=300,
            utterance_end_ms=1000, punctuate="true", smart_format="true") as conn:
        conn.send_media(b"\x00\x00" * 1600)
        conn.send_keep_alive()
        conn.send_finalize()
        conn.send_close_stream()
        for message in conn:
            parsed.append({"class": type(message).__name__,
                           "data": json.loads(message.model_dump_json(exclude_none=True))})
    out = {**CAPTURED, "parsed": parsed,
           "strict": [strict(m) for m in PAYLOAD["messages"]]}
    out["headers"] = {k: v for k, v in out["headers"].items()
                      if k.lower() in ("authorization",)}
    print(json.dumps(out))


main()
