// One load-generator process: holds its share of the Socket.IO clients (forked by main.js).
// Every loop is bounded by a count or a deadline; the process exits when main.js says so or goes away.
"use strict";

const { io } = require("socket.io-client");

const now = () => performance.timeOrigin + performance.now(); // ms, comparable across processes
const SAMPLE_CAP = 300000;

let cfg = null;
let index = 0;
let share = 0;
let senders = 0; // how many broadcast senders this worker runs
const sockets = [];
let connectFailed = 0;
let disconnects = 0;
const connectTimes = [];
const upgradeTimes = [];
const upgradeFailed = { n: 0 };
let opened = 0; // clients this worker has started, for spreading them over cfg.urls

function send(msg) {
  if (process.connected) process.send(msg);
}

class Samples {
  constructor(cap = SAMPLE_CAP) {
    this.cap = cap;
    this.values = [];
    this.seen = 0;
  }
  add(v) {
    this.seen += 1;
    if (this.values.length < this.cap) this.values.push(v);
    else {
      const j = Math.floor(Math.random() * this.seen);
      if (j < this.cap) this.values[j] = v;
    }
  }
}

function options() {
  const opts = {
    withCredentials: true, // keeps the sticky `io` cookie, also on the WebSocket upgrade (4.8+)
    reconnection: false, // a failure is counted, not hidden by a retry
    timeout: cfg.connectTimeoutMs || 20000,
    forceNew: true,
  };
  if (cfg.transports) opts.transports = cfg.transports;
  return opts;
}

// cfg.urls (several HAProxy processes in front of the same apps, capacity): each new client takes the next one,
// starting at this worker's index, so every load balancer gets an even share whatever the worker count.
// Otherwise cfg.url, as every other scenario.
function nextUrl() {
  const urls = cfg.urls && cfg.urls.length ? cfg.urls : [cfg.url];
  const url = urls[(index + opened) % urls.length];
  opened += 1;
  return url;
}

function connectOne() {
  return new Promise((resolve) => {
    const started = now();
    const socket = io(nextUrl(), options());
    let settled = false;
    const finish = (ok) => {
      if (settled) return;
      settled = true;
      if (ok) {
        if (ok === "upgraded") upgradeTimes.push(now() - started);
        sockets.push(socket);
        socket.on("disconnect", () => {
          disconnects += 1;
        });
      } else {
        connectFailed += 1;
        socket.close();
      }
      resolve(ok);
    };
    socket.once("connect", () => {
      connectTimes.push(now() - started);
      const wantUpgrade = cfg.waitUpgrade && !(cfg.transports && !cfg.transports.includes("websocket"));
      if (!wantUpgrade) return finish(true);
      if (socket.io.engine.transport.name === "websocket") return finish("upgraded");
      const timer = setTimeout(() => {
        upgradeFailed.n += 1;
        finish(true); // connected, but still on polling: counted apart
      }, cfg.upgradeTimeoutMs || 10000);
      socket.io.engine.once("upgrade", () => {
        clearTimeout(timer);
        finish("upgraded");
      });
    });
    socket.once("connect_error", () => finish(false));
  });
}

// Opens `count` more clients at `rate` per second (this worker's share of the ramp).
async function connectMany(count, rate) {
  const pending = [];
  const interval = rate > 0 ? 1000 / rate : 0;
  const t0 = now();
  for (let i = 0; i < count; i++) {
    if (interval) {
      const due = t0 + i * interval;
      const wait = due - now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    }
    pending.push(connectOne());
  }
  await Promise.all(pending);
}

function cpuSince(start) {
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1e6;
}

async function runEcho(durationMs) {
  const lat = new Samples();
  let acks = 0;
  let errors = 0;
  const payload = cfg.payload ?? "hello";
  const cpu0 = process.cpuUsage();
  const t0 = now();
  const deadline = t0 + durationMs;
  await Promise.all(
    sockets.map(
      (socket) =>
        new Promise((resolve) => {
          const once = () => {
            if (now() >= deadline || !socket.connected) return resolve();
            const sent = now();
            socket.timeout(cfg.ackTimeoutMs || 10000).emit("echo", payload, (err) => {
              if (err) errors += 1;
              else {
                const at = now();
                if (at <= deadline) {
                  acks += 1;
                  lat.add(at - sent);
                }
              }
              once();
            });
          };
          once();
        })
    )
  );
  return { acks, errors, elapsedMs: now() - t0, latencies: lat.values, latencySeen: lat.seen, cpuS: cpuSince(cpu0) };
}

// `rate` and `stepId` are given by broadcast_ceiling only: `rate` messages/s per sender on a fixed schedule
// that catches up when a timer fires late (so the asked rate is really sent), and every message carries
// the step id `k`, so a step counts only its own deliveries (a later one from an earlier step is `stale`).
// Without them (the broadcast scenario) it behaves as before: cfg.sendRate on setInterval.
async function runBroadcast(durationMs, graceMs, rate, stepId) {
  const lat = new Samples();
  let received = 0;
  let late = 0;
  let stale = 0;
  let sent = 0;
  let sendErrors = 0;
  const handlers = [];
  for (const socket of sockets) {
    const h = (msg) => {
      if (msg && typeof msg.t === "number") {
        if (stepId !== undefined && msg.k !== stepId) {
          stale += 1;
          return;
        }
        received += 1;
        lat.add(now() - msg.t);
      } else late += 1;
    };
    socket.on("broadcast", h);
    handlers.push([socket, h]);
  }
  const cpu0 = process.cpuUsage();
  const t0 = now();
  const timers = [];
  const perSecond = rate || cfg.sendRate || 10;
  const pumps = [];
  for (let s = 0; s < senders && s < sockets.length; s++) {
    const socket = sockets[s];
    let seq = 0;
    const maxMessages = Math.ceil((durationMs / 1000) * perSecond);
    if (rate) {
      const period = 1000 / perSecond;
      const pump = () => {
        // every message due by now, at most maxMessages in all
        const due = Math.min(maxMessages, Math.floor((now() - t0) / period) + 1);
        while (seq < due) {
          seq += 1;
          sent += 1;
          socket.timeout(10000).emit("broadcast", { t: now(), w: index, s, seq, k: stepId }, (err) => {
            if (err) sendErrors += 1;
          });
        }
      };
      pump();
      pumps.push(pump);
      timers.push(setInterval(pump, period));
      continue;
    }
    const timer = setInterval(() => {
      if (seq >= maxMessages || now() - t0 >= durationMs) return;
      seq += 1;
      sent += 1;
      socket.timeout(10000).emit("broadcast", { t: now(), w: index, s, seq }, (err) => {
        if (err) sendErrors += 1;
      });
    }, 1000 / perSecond);
    timers.push(timer);
  }
  await new Promise((r) => setTimeout(r, durationMs));
  timers.forEach(clearInterval);
  pumps.forEach((pump) => pump()); // the messages that fell due just before the end (all of them are due by now)
  const sentMs = now() - t0;
  await new Promise((r) => setTimeout(r, graceMs));
  for (const [socket, h] of handlers) socket.off("broadcast", h);
  return { received, sent, sendErrors, late, stale, sentMs, elapsedMs: now() - t0, latencies: lat.values, latencySeen: lat.seen, cpuS: cpuSince(cpu0) };
}

// One echo from every client: how many are really alive (capacity's final check).
async function aliveCheck() {
  let ok = 0;
  await Promise.all(
    sockets.map(
      (socket) =>
        new Promise((resolve) => {
          if (!socket.connected) return resolve();
          socket.timeout(cfg.ackTimeoutMs || 20000).emit("echo", 1, (err) => {
            if (!err) ok += 1;
            resolve();
          });
        })
    )
  );
  return ok;
}

async function whoamiCounts() {
  const counts = {};
  await Promise.all(
    sockets.map(
      (socket) =>
        new Promise((resolve) => {
          socket.timeout(10000).emit("whoami", null, (err, name) => {
            const key = err ? "(error)" : String(name);
            counts[key] = (counts[key] || 0) + 1;
            resolve();
          });
        })
    )
  );
  return counts;
}

function snapshot() {
  let websocket = 0;
  let connected = 0;
  for (const s of sockets) {
    if (s.connected) connected += 1;
    if (s.io.engine && s.io.engine.transport && s.io.engine.transport.name === "websocket") websocket += 1;
  }
  return { connected, websocket, connectFailed, disconnects, upgradeTimeouts: upgradeFailed.n };
}

process.on("message", async (msg) => {
  try {
    if (msg.cmd === "init") {
      cfg = msg.cfg;
      index = msg.index;
      share = msg.share;
      senders = msg.senders || 0;
      send({ ev: "init" });
    } else if (msg.cmd === "connect") {
      const cpu0 = process.cpuUsage();
      const target = Math.min(msg.upTo ?? share, share);
      const count = Math.max(0, target - sockets.length - 0);
      connectTimes.length = 0;
      upgradeTimes.length = 0;
      await connectMany(count, msg.rate);
      send({ ev: "connected", ...snapshot(), connectTimes: connectTimes.slice(), upgradeTimes: upgradeTimes.slice(), cpuS: cpuSince(cpu0) });
    } else if (msg.cmd === "echo") {
      send({ ev: "done", ...(await runEcho(msg.durationMs)), ...snapshot() });
    } else if (msg.cmd === "broadcast") {
      send({ ev: "done", ...(await runBroadcast(msg.durationMs, msg.graceMs, msg.rate, msg.stepId)), ...snapshot() });
    } else if (msg.cmd === "whoami") {
      send({ ev: "whoami", counts: await whoamiCounts() });
    } else if (msg.cmd === "hold") {
      const cpu0 = process.cpuUsage();
      await new Promise((r) => setTimeout(r, msg.durationMs));
      const alive = await aliveCheck();
      send({ ev: "held", alive, cpuS: cpuSince(cpu0), ...snapshot() });
    } else if (msg.cmd === "close") {
      for (const s of sockets) s.close();
      setTimeout(() => process.exit(0), 200);
    }
  } catch (err) {
    send({ ev: "error", message: String(err && err.stack ? err.stack : err) });
  }
});

process.on("disconnect", () => process.exit(0)); // main.js went away
