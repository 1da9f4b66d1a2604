// Many Node socket.io-client clients in one process, each echoing for a while; used by
// tests/deployment/test_per_address_limits.py and bench/measure_limits.py.
// usage: node tests/deployment/node/sio-echoers.mjs '{"url": "...", "clients": 200, "durationMs": 60000, "echoEveryMs": 500}'
// Options: transports (["polling"]), localAddress (the source address of every connection), echoEveryMs (0: the
// next echo as soon as the ack is back), reconnection (false), reconnectionDelay / reconnectionDelayMax (ms),
// ackTimeoutMs (5000), connectTimeoutMs (20000), rampMs (0: every client starts at once, else spread evenly).
// Each request is a new TCP connection, as with the client's default (no keep-alive agent). Prints
// {"connected": n} once every client has connected for the first time, then one summary line (JSON) when
// durationMs is over. Bounded: exits after durationMs + 10 s at the latest.
import http from "node:http";
import { io } from "socket.io-client";

const o = JSON.parse(process.argv[2]);
const now = () => performance.timeOrigin + performance.now(); // ms since the epoch, comparable with Python's
// keepAlive false: a new connection for every request, as Node's own default (agent: false) makes
const agent = o.localAddress ? new http.Agent({ keepAlive: false, localAddress: o.localAddress }) : false;
const started = now();
const end = started + o.durationMs;
const result = {
  clients: o.clients,
  connectedOnce: 0, // clients that connected at least once
  connects: 0, // every connect, reconnects included
  reconnectTimes: [], // epoch ms of each connect after a client's first
  echoes: 0,
  echoFailures: 0,
  latencies: null,
  disconnects: 0,
  errors: {}, // error text -> count (connect_error messages with their HTTP status, disconnect reasons, acks)
  statuses: {}, // HTTP status -> count, from failed polling requests
};
const latencies = [];
const sockets = [];
let announced = false;

function count(text, description) {
  const status = typeof description === "number" ? description : description?.description;
  if (typeof status === "number" && status > 0) result.statuses[status] = (result.statuses[status] ?? 0) + 1;
  const key = typeof status === "number" && status > 0 ? `${text} (${status})` : text;
  result.errors[key] = (result.errors[key] ?? 0) + 1;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function echoLoop(socket, index) {
  let i = 0;
  while (now() < end) {
    if (!socket.connected) {
      await sleep(20);
      continue;
    }
    const payload = { index, i: i++ };
    const sent = now();
    try {
      const reply = await socket.timeout(o.ackTimeoutMs ?? 5000).emitWithAck("echo", payload);
      if (JSON.stringify(reply) === JSON.stringify(payload)) {
        result.echoes += 1;
        latencies.push(now() - sent);
      } else {
        result.echoFailures += 1;
        count(`echo reply: ${JSON.stringify(reply).slice(0, 60)}`);
      }
    } catch (error) {
      result.echoFailures += 1;
      count(`ack: ${error.message}`);
    }
    if (o.echoEveryMs) await sleep(Math.max(0, sent + o.echoEveryMs - now()));
  }
}

function start(index) {
  const socket = io(o.url, {
    transports: o.transports ?? ["polling"],
    withCredentials: true, // keeps the io cookie in Node (>= 4.7), also on the upgrade (>= 4.8)
    forceNew: true,
    agent,
    timeout: o.connectTimeoutMs ?? 20000,
    reconnection: o.reconnection ?? false,
    reconnectionDelay: o.reconnectionDelay ?? 1000,
    reconnectionDelayMax: o.reconnectionDelayMax ?? 5000,
  });
  let everConnected = false;
  socket.on("connect", () => {
    result.connects += 1;
    if (everConnected) result.reconnectTimes.push(now());
    else {
      everConnected = true;
      result.connectedOnce += 1;
      echoLoop(socket, index);
    }
    if (!announced && result.connectedOnce === o.clients) {
      announced = true;
      console.log(JSON.stringify({ connected: result.connectedOnce, afterMs: Math.round(now() - started) }));
    }
  });
  socket.on("connect_error", (error) => count(`connect_error: ${error.message}`, error.description));
  socket.on("disconnect", (reason, details) => {
    if (now() >= end) return; // our own close at the end
    result.disconnects += 1;
    count(`disconnect: ${reason}`, details?.description ?? details);
  });
  sockets.push(socket);
}

for (let index = 0; index < o.clients; index++) {
  if (o.rampMs) setTimeout(() => start(index), (o.rampMs * index) / o.clients);
  else start(index);
}

function finish() {
  for (const socket of sockets) socket.close();
  latencies.sort((a, b) => a - b);
  const pick = (q) => (latencies.length ? Math.round(latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]) : null);
  result.latencies = { p50: pick(0.5), p99: pick(0.99), max: latencies.length ? Math.round(latencies.at(-1)) : null };
  result.reconnectTimes = result.reconnectTimes.map(Math.round);
  console.log(JSON.stringify(result));
  process.exit(0);
}

setTimeout(finish, o.durationMs + (o.ackTimeoutMs ?? 5000) + 100); // acks in flight at the end get their time
setTimeout(() => process.exit(3), o.durationMs + 10000).unref();
