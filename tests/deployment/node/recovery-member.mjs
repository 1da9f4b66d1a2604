// A room member for tests/deployment/test_recovery.py and bench/measure_recovery.py: one Node socket.io-client socket
// that joins a room, records every "message" it gets (with the offset the server appends), and every
// (re)connect with its socket id and `socket.recovered`. It joins the room again only after a connect that
// was not a recovery (what an app does). Prints {"joined": true, "instance": ...} once in the room, then,
// when a line "stop" arrives on stdin (or after timeoutMs), one JSON summary line and exits.
// usage: node tests/deployment/node/recovery-member.mjs '{"url": "...", "room": "r1", "transports": ["websocket"]}'
import readline from "node:readline";
import { io } from "socket.io-client";

const o = JSON.parse(process.argv[2]);
const now = () => performance.timeOrigin + performance.now(); // ms since the epoch, comparable with Python's
const result = {
  connects: [], // {id, recovered, at, instance}
  disconnects: [], // {reason, at}
  messages: [], // the "message" field of each message, in arrival order
  receivedAt: [], // epoch ms of each message
  offsets: 0, // messages that came with a string offset as last argument
  errors: [],
};

const socket = io(o.url, {
  transports: o.transports ?? ["polling", "websocket"],
  withCredentials: true, // keeps the io cookie in Node (>= 4.7), also on the upgrade (>= 4.8)
  reconnectionDelay: o.reconnectionDelay ?? 300,
  reconnectionDelayMax: o.reconnectionDelayMax ?? 1000,
  timeout: 10000,
});

socket.on("message", (payload, offset) => {
  result.messages.push(payload?.message ?? null);
  result.receivedAt.push(Math.round(now()));
  if (typeof offset === "string") result.offsets += 1;
});

socket.on("connect", async () => {
  const entry = { id: socket.id, recovered: socket.recovered === true, at: Math.round(now()), instance: null };
  result.connects.push(entry);
  try {
    entry.instance = await socket.timeout(5000).emitWithAck("whoami");
    if (!socket.recovered) {
      const reply = await socket.timeout(5000).emitWithAck("join", { room: o.room });
      if (!reply?.ok) result.errors.push(`join: ${JSON.stringify(reply)}`);
    }
    if (result.connects.length === 1) console.log(JSON.stringify({ joined: true, id: socket.id, instance: entry.instance }));
  } catch (error) {
    result.errors.push(`after connect: ${error.message}`);
  }
});
socket.on("disconnect", (reason) => result.disconnects.push({ reason, at: Math.round(now()) }));
socket.on("connect_error", (error) => result.errors.push(`connect_error: ${error.message}`));

function finish() {
  result.transport = socket.io.engine?.transport?.name ?? null;
  socket.close();
  console.log(JSON.stringify(result));
  process.exit(0);
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "stop") finish();
});
setTimeout(() => { result.errors.push("timeout"); finish(); }, o.timeoutMs ?? 120000);
