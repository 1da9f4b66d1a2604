// Node socket.io-client clients in one process, as a page would run them (withCredentials: true, polling then
// the upgrade); used by the Docker tests. Each asks `whoami` every askEveryMs and records which instance
// answered, over which transport, and every disconnect and reconnect.
// usage: node tests/deployment/node/sio-fleet.mjs '{"url": "...", "clients": 30, "durationMs": 15000}'
// Options: askEveryMs (250), transports (["polling", "websocket"]), rampMs (0), readyTimeoutMs (20000),
// reconnectionDelay / reconnectionDelayMax (ms; 200 / 1000).
// Prints {"ready": n, "at": epoch ms} once every client has connected and upgraded (or readyTimeoutMs is over),
// then one summary line (JSON) when durationMs is over. Bounded: exits after durationMs + 10 s at the latest.
import { io } from "socket.io-client";

const o = JSON.parse(process.argv[2]);
const now = () => performance.timeOrigin + performance.now(); // epoch ms, comparable with Python's time.time()
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const started = now();
const end = started + o.durationMs;
const transports = o.transports ?? ["polling", "websocket"];
const wantUpgrade = transports.includes("websocket") && transports.length > 1;

// per client: answers as runs of one instance [{instance, sid, transport, from, to, count}], connect and
// disconnect times, and failures (connect errors, ack timeouts)
const clients = [];

function record(client, socket, instance) {
  const t = now();
  const transport = socket.io.engine?.transport?.name ?? null;
  const last = client.runs.at(-1);
  if (last && last.instance === instance && last.sid === socket.id) {
    last.to = t;
    last.count += 1;
    last.transport = transport;
  } else {
    client.runs.push({ instance, sid: socket.id, transport, from: t, to: t, count: 1 });
  }
}

async function askLoop(client, socket) {
  while (now() < end) {
    if (socket.connected) {
      try {
        record(client, socket, await socket.timeout(3000).emitWithAck("whoami"));
      } catch (error) {
        client.ackFailures += 1;
      }
    }
    await sleep(o.askEveryMs ?? 250);
  }
}

function upgraded(socket) {
  return !wantUpgrade || socket.io.engine?.transport?.name === "websocket";
}

for (let i = 0; i < o.clients; i++) {
  if (o.rampMs) await sleep(o.rampMs / o.clients);
  const client = { runs: [], connects: [], disconnects: [], errors: {}, ackFailures: 0 };
  clients.push(client);
  const socket = io(o.url, {
    transports,
    withCredentials: true, // keeps the io cookie in Node (>= 4.7), also on the upgrade (>= 4.8)
    reconnectionDelay: o.reconnectionDelay ?? 200,
    reconnectionDelayMax: o.reconnectionDelayMax ?? 1000,
    timeout: 5000,
  });
  client.socket = socket;
  socket.on("connect", () => client.connects.push(now()));
  socket.on("disconnect", (reason) => client.disconnects.push([now(), reason]));
  socket.on("connect_error", (error) => {
    const key = `${error.message}${error.description?.description ? ` (${error.description.description})` : ""}`;
    client.errors[key] = (client.errors[key] ?? 0) + 1;
  });
  socket.io.on("open", () => socket.io.engine.on("upgrade", () => (client.upgradedAt ??= now())));
  askLoop(client, socket);
}

const readyBy = now() + (o.readyTimeoutMs ?? 20000);
while (now() < readyBy && !clients.every((c) => c.socket.connected && upgraded(c.socket) && c.runs.length)) {
  await sleep(50);
}
console.log(JSON.stringify({ ready: clients.filter((c) => c.socket.connected && upgraded(c.socket)).length, at: now() }));

setTimeout(() => process.exit(3), Math.max(0, end - now()) + 10000).unref();
await sleep(Math.max(0, end - now()) + 100);
for (const client of clients) {
  client.transportAtEnd = client.socket.io.engine?.transport?.name ?? null;
  client.connectedAtEnd = client.socket.connected;
  client.socket.off("disconnect"); // our own close is not a disconnect to count
  client.socket.close();
  delete client.socket;
}
console.log(JSON.stringify({ clients }));
process.exit(0);
