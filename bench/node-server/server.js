// Reference server for bench/run: Node socket.io 4.8 + @socket.io/redis-adapter, the same events and
// `io` cookie as the template (deployment/operations/probes.py), plus /readyz for haproxy/haproxy.cfg's health check.
//   PORT=8001 INSTANCE_NAME=node1 REDIS_URL=redis://127.0.0.1:6379/0 node bench/node-server/server.js
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 8001);
const host = process.env.HOST || "127.0.0.1";
const instance = process.env.INSTANCE_NAME || `node-${process.pid}`;
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";

const httpServer = http.createServer((req, res) => {
  const path = (req.url || "").split("?")[0];
  if (path === "/readyz" || path === "/healthz") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ status: "ok", instance }));
    return;
  }
  res.writeHead(404);
  res.end();
});

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (err) => console.error("redis pub:", err.message));
  sub.on("error", (err) => console.error("redis sub:", err.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const io = new Server(httpServer, {
    adapter: createAdapter(pub, sub),
    cookie: { name: "io", path: "/", httpOnly: true, sameSite: "lax" },
    pingInterval: 25000,
    pingTimeout: 20000,
    maxHttpBufferSize: 1e6,
  });

  io.on("connection", (socket) => {
    socket.on("echo", (data, ack) => {
      if (typeof ack === "function") ack(data);
    });
    socket.on("whoami", (_data, ack) => {
      if (typeof _data === "function") ack = _data;
      if (typeof ack === "function") ack(instance);
    });
    socket.on("broadcast", (data, ack) => {
      io.emit("broadcast", data); // every client of every process, through Redis
      if (typeof ack === "function") ack({ ok: true });
    });
  });

  httpServer.listen(port, host, () => console.log(`${instance} listening on ${host}:${port}`));
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
