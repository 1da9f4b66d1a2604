"""The demo's presence with Redis behind Sentinel: kept on the master that the sentinels name. The sentinel, its
master and the 3-instance stack (REQUIRE_LOGIN=true) are the stack's own fixtures (tests/deployment/)."""

import uuid

import socketio
from test_redis_sentinel import master, sentinel, signed_in_session, stack  # noqa: F401  (fixtures)


def test_demo_presence_across_instances_is_kept_on_the_master(stack, master):  # noqa: F811
    apps = stack.status()["apps"][:2]
    room = uuid.uuid4().hex
    members = []
    try:
        for i, app in enumerate(apps):
            name = f"p{i}-{uuid.uuid4().hex[:6]}"
            client = socketio.Client(http_session=signed_in_session(app["url"], name), reconnection=False)
            client.connect(app["url"], namespaces=["/demo"], transports=["polling"], wait_timeout=5)
            members.append(client)
            reply = client.call("join", {"room": room}, namespace="/demo", timeout=5)
        seen = {(member["user"][:2], member["instance"]) for member in reply["presence"]["members"]}
        assert seen == {("p0", apps[0]["name"]), ("p1", apps[1]["name"])}
        assert master.hlen(f"flask-socketio:presence:room:{room}") == 2
    finally:
        for client in members:
            client.disconnect()
