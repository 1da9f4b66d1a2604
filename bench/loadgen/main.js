// Load generator of bench/run: forks `workers` processes (worker.js), each holding its share of the
// Socket.IO clients, and drives one scenario. Prints one JSON object per line on stdout:
//   {"event":"ready"|"start"|"end"|"step"|"result"|"error", ...}
// bench/bench.py samples the servers' CPU and memory when it reads "start", "end" and "step".
//   node bench/loadgen/main.js '{"scenario":"echo","url":"http://127.0.0.1:8080","clients":200,...}'
"use strict";

const { fork } = require("node:child_process");
const path = require("node:path");

const cfg = JSON.parse(process.argv[2] || "{}");
const nWorkers = Math.max(1, Math.min(cfg.workers || 2, cfg.clients || 1));
const children = [];
const cpuMain0 = process.cpuUsage();
const hardDeadline = setTimeout(() => fail(`loadgen exceeded its time limit of ${cfg.timeLimitS || 600}s`), (cfg.timeLimitS || 600) * 1000);
hardDeadline.unref();

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function fail(message) {
  out({ event: "error", message });
  for (const c of children) c.kill("SIGKILL");
  process.exit(1);
}

function shares(total, n) {
  const base = Math.floor(total / n);
  return Array.from({ length: n }, (_, i) => base + (i < total % n ? 1 : 0));
}

// Sends a command to every worker and waits for one reply of `ev` from each.
function all(cmdFor, ev) {
  return Promise.all(
    children.map(
      (child, i) =>
        new Promise((resolve) => {
          const onMsg = (msg) => {
            if (msg.ev === "error") fail(`worker ${i}: ${msg.message}`);
            if (msg.ev === ev) {
              child.off("message", onMsg);
              resolve(msg);
            }
          };
          child.on("message", onMsg);
          child.send(cmdFor(i));
        })
    )
  );
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[idx] * 1000) / 1000;
}

function latencyStats(arrays) {
  const all = [].concat(...arrays).sort((a, b) => a - b);
  return { n: all.length, p50_ms: percentile(all, 50), p90_ms: percentile(all, 90), p99_ms: percentile(all, 99), max_ms: all.length ? Math.round(all[all.length - 1] * 1000) / 1000 : null };
}

const sum = (msgs, key) => msgs.reduce((a, m) => a + (m[key] || 0), 0);

function connState(msgs) {
  return {
    connected: sum(msgs, "connected"),
    websocket: sum(msgs, "websocket"),
    connect_failed: sum(msgs, "connectFailed"),
    disconnects: sum(msgs, "disconnects"),
    upgrade_timeouts: sum(msgs, "upgradeTimeouts"),
  };
}

async function main() {
  const workerJs = path.join(__dirname, "worker.js");
  const sizes = shares(cfg.clients, nWorkers);
  const senderShares = shares(cfg.senders || 0, nWorkers);
  for (let i = 0; i < nWorkers; i++) {
    const child = fork(workerJs, [], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    child.on("exit", (code) => {
      if (code && !closing) fail(`worker ${i} exited with ${code}`);
    });
    children.push(child);
  }
  await all((i) => ({ cmd: "init", cfg, index: i, share: sizes[i], senders: senderShares[i] }), "init");
  const rate = (cfg.rate || 0) / nWorkers;
  const result = { scenario: cfg.scenario, clients: cfg.clients, workers: nWorkers };
  let loadgenCpu = 0;

  if (cfg.scenario === "capacity") {
    const steps = cfg.steps && cfg.steps.length ? cfg.steps : [cfg.clients];
    result.steps = [];
    const t0 = Date.now();
    out({ event: "start" });
    for (const target of steps) {
      const perWorker = shares(target, nWorkers);
      const tStep = Date.now();
      const msgs = await all((i) => ({ cmd: "connect", upTo: perWorker[i], rate }), "connected");
      loadgenCpu += sum(msgs, "cpuS");
      const step = { target, ...connState(msgs), step_s: (Date.now() - tStep) / 1000, connect: latencyStats(msgs.map((m) => m.connectTimes)) };
      result.steps.push(step);
      out({ event: "step", ...step });
      await new Promise((r) => setTimeout(r, cfg.stepHoldMs || 1000));
    }
    result.ramp_s = (Date.now() - t0) / 1000;
    const held = await all(() => ({ cmd: "hold", durationMs: cfg.holdMs || 10000 }), "held");
    loadgenCpu += sum(held, "cpuS");
    out({ event: "end" });
    Object.assign(result, connState(held), { alive_after_hold: sum(held, "alive"), hold_s: (cfg.holdMs || 10000) / 1000 });
    result.failures = cfg.clients - result.alive_after_hold;
  } else {
    const measureConnect = cfg.scenario === "connect";
    const t0 = Date.now();
    if (measureConnect) out({ event: "start" });
    const msgs = await all(() => ({ cmd: "connect", rate }), "connected");
    const connectS = (Date.now() - t0) / 1000;
    Object.assign(result, connState(msgs));
    result.connect = latencyStats(msgs.map((m) => m.connectTimes));
    result.upgraded = latencyStats(msgs.map((m) => m.upgradeTimes));
    result.connect_wall_s = connectS;
    if (measureConnect) {
      loadgenCpu += sum(msgs, "cpuS");
      out({ event: "end" });
      result.connects_per_s = result.connected / connectS;
      const who = await all(() => ({ cmd: "whoami" }), "whoami");
      result.instances = {};
      for (const w of who) for (const [k, v] of Object.entries(w.counts)) result.instances[k] = (result.instances[k] || 0) + v;
    } else {
      out({ event: "ready", ...connState(msgs) });
      const durationMs = cfg.durationMs || 10000;
      await new Promise((r) => setTimeout(r, cfg.settleMs ?? 1000));
      out({ event: "start" });
      if (cfg.scenario === "echo") {
        const done = await all(() => ({ cmd: "echo", durationMs }), "done");
        out({ event: "end" });
        loadgenCpu += sum(done, "cpuS");
        const elapsed = Math.max(...done.map((d) => d.elapsedMs)) / 1000;
        result.acks = sum(done, "acks");
        result.ack_errors = sum(done, "errors");
        result.duration_s = elapsed;
        result.echo_per_s = result.acks / elapsed;
        result.latency = latencyStats(done.map((d) => d.latencies));
        result.after = connState(done);
      } else if (cfg.scenario === "broadcast") {
        const graceMs = cfg.graceMs ?? 2000;
        const done = await all(() => ({ cmd: "broadcast", durationMs, graceMs }), "done");
        out({ event: "end" });
        loadgenCpu += sum(done, "cpuS");
        result.sent = sum(done, "sent");
        result.send_errors = sum(done, "sendErrors");
        result.received = sum(done, "received");
        result.expected = result.sent * result.connected;
        result.delivered_fraction = result.expected ? result.received / result.expected : null;
        result.duration_s = durationMs / 1000;
        result.asked_deliveries_per_s = (cfg.senders * (cfg.sendRate || 10)) * cfg.clients;
        result.delivered_per_s = result.received / (durationMs / 1000);
        result.latency = latencyStats(done.map((d) => d.latencies));
        result.after = connState(done);
      } else {
        fail(`unknown scenario ${cfg.scenario}`);
      }
    }
  }
  result.loadgen_cpu_s = loadgenCpu + cpuMainSeconds();
  out({ event: "result", result });
  closing = true;
  for (const c of children) c.send({ cmd: "close" });
  await new Promise((r) => setTimeout(r, 500));
  process.exit(0);
}

let closing = false;
function cpuMainSeconds() {
  const d = process.cpuUsage(cpuMain0);
  return (d.user + d.system) / 1e6;
}

main().catch((err) => fail(String(err && err.stack ? err.stack : err)));
