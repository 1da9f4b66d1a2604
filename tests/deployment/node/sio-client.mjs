// A Node socket.io-client run used by tests/deployment/test_node_client.py: prints one JSON line with what happened.
// usage: node tests/deployment/node/sio-client.mjs '{"url": "...", "withCredentials": true, "transports": ["polling"], "echoes": 20}'
import { io } from "socket.io-client";

const options = JSON.parse(process.argv[2]);
const result = { connected: false, echoes: 0, instances: [], transport: null, errors: [] };
let finished = false;

const socket = io(options.url, {
  transports: options.transports ?? ["polling", "websocket"],
  withCredentials: options.withCredentials,  // keeps the io cookie in Node (>= 4.7), also on the upgrade (>= 4.8)
  reconnection: false,
  timeout: 5000,
});

function finish() {
  if (finished) return;
  finished = true;
  result.transport = socket.io.engine?.transport?.name ?? null;
  socket.close();
  console.log(JSON.stringify(result));
  process.exit(0);
}

setTimeout(() => { result.errors.push("timeout"); finish(); }, options.timeoutMs ?? 20000);
socket.on("connect_error", (error) => { result.errors.push(`connect_error: ${error.message}`); finish(); });
socket.on("disconnect", (reason) => {
  if (finished) return;  // our own close() in finish()
  result.errors.push(`disconnect: ${reason}`);
  finish();
});

socket.on("connect", async () => {
  result.connected = true;
  try {
    if (options.waitForUpgrade) {
      await new Promise((resolve) => {
        if (socket.io.engine.transport.name === "websocket") return resolve();
        socket.io.engine.once("upgrade", resolve);
      });
    }
    for (let i = 0; i < (options.echoes ?? 10); i++) {
      const payload = { i, text: "héllo" };
      const reply = await socket.timeout(5000).emitWithAck("echo", payload);
      if (JSON.stringify(reply) === JSON.stringify(payload)) result.echoes += 1;
      const instance = await socket.timeout(5000).emitWithAck("whoami");
      if (!result.instances.includes(instance)) result.instances.push(instance);
    }
  } catch (error) {
    result.errors.push(`ack: ${error.message}`);
  }
  finish();
});
