// Load generator of bench/run: forks `workers` processes (worker.js), each holding its share of the
// Socket.IO clients, and drives one scenario. Prints one JSON object per line on stdout:
//   {"event":"ready"|"start"|"end"|"step"|"result"|"error", ...}
// bench/bench.py samples the servers' CPU and memory when it reads "start", "end" and "step".
//   node bench/loadgen/main.js '{"scenario":"echo","url":"http://127.0.0.1:8080","clients":200,...}'
// With "urls": [...] (several HAProxy processes in front of the same apps) the clients are spread over them
// (worker.js: each new client takes the next URL); "url" is used otherwise.
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
  if (cfg.urls && cfg.urls.length) result.load_balancer_urls = cfg.urls.length;
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
      } else if (cfg.scenario === "broadcast_ceiling") {
        const ceiling = await broadcastCeiling(result.connected);
        loadgenCpu += ceiling.cpuS;
        Object.assign(result, ceiling.res);
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

// broadcast_ceiling: the clients stay connected while the asked delivery rate steps up (cfg.steps, deliveries/s,
// i.e. senders x messages/s x clients). A step passes when every delivery arrived within its grace (the
// broadcast scenario's accounting: sent x connected clients) and p99 < cfg.p99LimitMs; the first step that fails
// ends the climb. At most 50 steps, each stepMs + graceMs long.
async function broadcastCeiling(connected) {
  const stepMs = cfg.stepMs || 6000;
  const graceMs = cfg.graceMs ?? 2000;
  const limit = cfg.p99LimitMs ?? 100;
  const senders = cfg.senders || 2;
  const steps = (cfg.steps || []).slice(0, 50);
  const res = { steps: [], p99_limit_ms: limit, step_s: stepMs / 1000, grace_s: graceMs / 1000, steps_asked: steps };
  res.ceiling_deliveries_per_s = 0; // below the first step until one passes
  res.ceiling_delivered_per_s = null;
  res.ceiling_p99_ms = null;
  res.first_failed_deliveries_per_s = null;
  let cpu = 0;
  let received = 0;
  let sent = 0;
  for (let k = 0; k < steps.length; k++) {
    const asked = steps[k];
    const perSender = asked / (senders * cfg.clients); // messages/s for each sender
    out({ event: "step_begin", asked_deliveries_per_s: asked });
    const done = await all(() => ({ cmd: "broadcast", durationMs: stepMs, graceMs, rate: perSender, stepId: k + 1 }), "done");
    cpu += sum(done, "cpuS");
    const step = { asked_deliveries_per_s: asked, per_sender_per_s: perSender };
    step.planned = senders * Math.ceil((stepMs / 1000) * perSender);
    step.sent = sum(done, "sent");
    step.sent_per_s = step.sent / (Math.max(...done.map((d) => d.sentMs)) / 1000);
    step.send_errors = sum(done, "sendErrors");
    step.received = sum(done, "received");
    step.stale = sum(done, "stale");
    step.expected = step.sent * connected;
    step.delivered_fraction = step.expected ? step.received / step.expected : null;
    step.delivered_per_s = step.received / (stepMs / 1000);
    step.latency = latencyStats(done.map((d) => d.latencies));
    step.loadgen_cpu_pct_of_core = (100 * sum(done, "cpuS")) / (Math.max(...done.map((d) => d.elapsedMs)) / 1000); // workers only, step + grace
    Object.assign(step, connState(done));
    step.passed =
      connected === cfg.clients &&
      step.sent >= step.planned &&
      step.expected > 0 &&
      step.received >= step.expected &&
      step.latency.p99_ms !== null &&
      step.latency.p99_ms < limit;
    received += step.received;
    sent += step.sent;
    res.steps.push(step);
    out({ event: "step", ...step });
    if (!step.passed) {
      res.first_failed_deliveries_per_s = asked;
      break;
    }
    res.ceiling_deliveries_per_s = asked;
    res.ceiling_delivered_per_s = step.delivered_per_s;
    res.ceiling_p99_ms = step.latency.p99_ms;
  }
  out({ event: "end" });
  res.steps_passed = res.steps.filter((s) => s.passed).length;
  res.steps_tried = res.steps.length;
  res.received = received;
  res.sent = sent;
  const last = res.steps[res.steps.length - 1];
  if (last) {
    res.after = {};
    for (const key of ["connected", "websocket", "connect_failed", "disconnects", "upgrade_timeouts"]) res.after[key] = last[key];
  }
  return { res, cpuS: cpu };
}

let closing = false;
function cpuMainSeconds() {
  const d = process.cpuUsage(cpuMain0);
  return (d.user + d.system) / 1e6;
}

main().catch((err) => fail(String(err && err.stack ? err.stack : err)));
