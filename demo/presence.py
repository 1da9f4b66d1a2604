"""Who is in which room of the demo chat, right across instances.

With REDIS_URL (the stack): one Redis hash per room, field = Socket.IO sid, value = JSON
{user, instance, transport, boot}. Every change runs one Lua script that writes the entry and returns the
room's members together with a version number (one counter for all rooms), so the snapshots that each
instance emits to the room can be put in order by the pages: a page ignores a snapshot older than the one it
shows.

An instance that dies (SIGKILL, OOM, lost host) cannot remove its clients' entries. Each instance therefore
keeps a heartbeat key `alive:<instance>` = its boot id with a short TTL, and refreshes it every
HEARTBEAT_EVERY seconds. An entry whose instance has no heartbeat (or another boot id: the instance restarted)
is stale: snapshots leave it out, and every instance's sweeper deletes it and emits the corrected list.

Without REDIS_URL (one development process): the same interface, in this process's memory.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid

import redis

from deployment.operations.message_queue import redis_client

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 2  # seconds between an instance's heartbeats and sweeps
HEARTBEAT_TTL = 8  # seconds without a heartbeat after which an instance's entries are stale

# KEYS: room hash, rooms set, version counter, this instance's heartbeat; ARGV: room, sid, entry (JSON), boot id,
# heartbeat TTL. The heartbeat is refreshed here too, so an entry is never written without a live heartbeat.
ADD_SCRIPT = """
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
local version = redis.call('INCR', KEYS[3])
return {version, redis.call('HGETALL', KEYS[1])}
"""

# KEYS: room hash, rooms set, version counter; ARGV: room, sid...
REMOVE_SCRIPT = """
local removed = redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
end
local version = redis.call('INCR', KEYS[3])
return {version, redis.call('HGETALL', KEYS[1]), removed}
"""


class Snapshot(dict):
    """{"room": ..., "version": n, "members": [{sid, user, instance, transport}, ...]}, sorted by user."""

    @classmethod
    def of(cls, room, version, entries):
        members = [{"sid": sid, **{k: v for k, v in entry.items() if k != "boot"}} for sid, entry in entries.items()]
        members.sort(key=lambda member: (member.get("user") or "", member["sid"]))
        return cls(room=room, version=version, members=members)


class LocalPresence:
    """One process: rooms in a dict. No staleness: the process that holds the sockets holds the list."""

    def __init__(self, instance):
        self.instance = instance
        self.rooms = {}
        self.version = 0
        self.lock = threading.Lock()

    def add(self, room, sid, user, transport):
        with self.lock:
            self.rooms.setdefault(room, {})[sid] = {"user": user, "instance": self.instance, "transport": transport}
            return self._snapshot(room)

    def remove(self, room, sid):
        with self.lock:
            members = self.rooms.get(room, {})
            members.pop(sid, None)
            if not members:
                self.rooms.pop(room, None)
            return self._snapshot(room)

    def snapshot(self, room):
        with self.lock:
            return self._snapshot(room)

    def _snapshot(self, room):
        self.version += 1
        return Snapshot.of(room, self.version, dict(self.rooms.get(room, {})))

    def heartbeat(self):
        return []

    def close(self):
        pass


class RedisPresence:
    """Many instances: presence in Redis (see the module docstring)."""

    def __init__(self, url, instance, prefix="flask-socketio"):
        self.instance = instance
        self.boot = uuid.uuid4().hex[:12]
        self.redis = redis_client(url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
        self.prefix = f"{prefix}:presence"
        self.rooms_key = f"{self.prefix}:rooms"
        self.version_key = f"{self.prefix}:version"
        self._add = self.redis.register_script(ADD_SCRIPT)
        self._remove = self.redis.register_script(REMOVE_SCRIPT)

    def room_key(self, room):
        return f"{self.prefix}:room:{room}"

    def alive_key(self, instance):
        return f"{self.prefix}:alive:{instance}"

    def add(self, room, sid, user, transport):
        entry = json.dumps({"user": user, "instance": self.instance, "transport": transport, "boot": self.boot})
        version, flat = self._add(
            keys=[self.room_key(room), self.rooms_key, self.version_key, self.alive_key(self.instance)],
            args=[room, sid, entry, self.boot, HEARTBEAT_TTL],
        )
        return self._live_snapshot(room, version, flat)

    def remove(self, room, *sids):
        version, flat, _removed = self._remove(
            keys=[self.room_key(room), self.rooms_key, self.version_key], args=[room, *sids]
        )
        return self._live_snapshot(room, version, flat)

    def snapshot(self, room):
        with self.redis.pipeline() as pipe:  # MULTI: the version and the list are read together
            pipe.incr(self.version_key)
            pipe.hgetall(self.room_key(room))
            version, entries = pipe.execute()
        return self._live_snapshot(room, version, [item for pair in entries.items() for item in pair])

    def _live_snapshot(self, room, version, flat):
        entries = {flat[i]: json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        stale = self.stale_sids(entries)
        return Snapshot.of(room, int(version), {sid: e for sid, e in entries.items() if sid not in stale})

    def stale_sids(self, entries):
        instances = sorted({entry.get("instance", "") for entry in entries.values()})
        if not instances:
            return set()
        boots = dict(zip(instances, self.redis.mget([self.alive_key(name) for name in instances]), strict=True))
        return {sid for sid, entry in entries.items() if boots.get(entry.get("instance")) != entry.get("boot")}

    def heartbeat(self):
        """Refresh this instance's heartbeat, then sweep stale entries: returns the corrected snapshots."""
        self.redis.set(self.alive_key(self.instance), self.boot, ex=HEARTBEAT_TTL)
        changed = []
        for room in self.redis.smembers(self.rooms_key):
            entries = {sid: json.loads(value) for sid, value in self.redis.hgetall(self.room_key(room)).items()}
            stale = self.stale_sids(entries)
            if stale:
                log.info("presence: removing %d stale entries from room %s", len(stale), room)
                changed.append(self.remove(room, *stale))
            elif not entries:
                self._remove(keys=[self.room_key(room), self.rooms_key, self.version_key], args=[room, "-"])
        return changed

    def close(self):
        """Graceful stop: this instance's heartbeat goes at once, so its entries are swept right away."""
        try:
            self.redis.delete(self.alive_key(self.instance))
        except redis.RedisError:
            pass


def make_store(settings):
    if settings.redis_url:
        return RedisPresence(settings.redis_url, settings.instance_name, prefix=settings.message_queue_channel)
    return LocalPresence(settings.instance_name)
