// The demo page's client: a chat on the /demo namespace that shows which instance serves each participant and
// over which transport. Same origin, so the `io` cookie (HAProxy's stickiness) travels with every request.
// URL parameters prefill the form: /?name=alice&room=ops
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const logList = $("log");

  function addLog(text) {
    if (!logList) return;
    const item = document.createElement("li");
    item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    logList.prepend(item);
    while (logList.children.length > 50) logList.lastChild.remove();
  }

  function setStatus(state, text) {
    const status = $("status");
    status.className = `status status-${state}`;
    status.textContent = text || state;
  }

  // --- sign-in (REQUIRE_LOGIN=true): POST /login stores the user in the Flask session cookie -------------
  const signinForm = $("signin-form");
  if (signinForm) {
    setStatus("signed-out", "sign in to connect");
    signinForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const response = await fetch("/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: $("signin-name").value.trim() }),
        credentials: "same-origin",
      });
      if (response.ok) {
        location.reload();
      } else {
        const body = await response.json().catch(() => ({}));
        $("signin-error").textContent = body.error || `${response.status} ${response.statusText}`;
      }
    });
    return; // no connection until signed in: the server would refuse it
  }
  const signout = $("signout");
  if (signout) {
    signout.addEventListener("click", async () => {
      await fetch("/logout", { method: "POST", credentials: "same-origin" });
      location.reload();
    });
  }

  // --- the connection ------------------------------------------------------------------------------------
  const nameInput = $("name");
  const roomInput = $("room");
  const messageInput = $("message");
  const sendButton = $("send");
  if (nameInput) nameInput.value = params.get("name") || localStorage.getItem("demo.name") || "";
  roomInput.value = params.get("room") || localStorage.getItem("demo.room") || "lobby";

  let currentRoom = null;
  let presenceVersion = 0;
  let reconnects = 0;

  // One Manager (one Engine.IO connection) carries both namespaces: /demo for the chat, / for pushes.
  const chat = io("/demo", {
    auth: (send) => send({ user: nameInput ? nameInput.value.trim() : "" }),
    reconnectionDelay: 500,
    reconnectionDelayMax: 3000,
  });
  const root = io("/");
  window.demo = { chat, root };

  function showTransport(name) {
    $("transport").textContent = name;
    $("transport").dataset.transport = name;
  }

  function setSending(enabled) {
    messageInput.disabled = !enabled;
    sendButton.disabled = !enabled;
  }

  chat.io.on("open", () => {
    const engine = chat.io.engine;
    showTransport(engine.transport.name);
    engine.on("upgrade", (transport) => {
      showTransport(transport.name);
      addLog(`upgraded to ${transport.name}`);
      // the server reads the transport itself and updates this page's line in the presence list
      chat.emit("transport", {}, (reply) => reply && reply.transport && showTransport(reply.transport));
    });
  });
  chat.io.on("reconnect_attempt", (attempt) => {
    setStatus("reconnecting", `reconnecting (attempt ${attempt})`);
  });
  chat.io.on("reconnect", (attempts) => {
    reconnects += 1;
    $("reconnects").textContent = String(reconnects);
    addLog(`reconnected after ${attempts} attempt(s)`);
  });
  chat.io.on("reconnect_error", (error) => addLog(`reconnect failed: ${error.message}`));

  // CONNECTION_STATE_RECOVERY on the server: after a cut the socket comes back with its id, rooms and the
  // messages it missed; those are handed to the handlers before "connect", so the ones seen while away are marked
  let away = false;
  chat.on("connect", () => {
    away = false;
    setStatus(chat.recovered ? "recovered" : "connected");
    if (chat.recovered) addLog("recovered: same id, same room, missed messages replayed");
    setSending(false);
    join(roomInput.value); // again after every reconnect: the new instance's presence list knows nothing of this page
  });
  chat.on("welcome", (info) => {
    $("instance").textContent = info.instance;
    $("user").textContent = info.user;
    document.body.dataset.sid = info.sid;
    showTransport(info.transport);
    addLog(`connected to ${info.instance} over ${info.transport} as ${info.user}${info.recovered ? " (session recovered)" : ""}`);
  });
  chat.on("disconnect", (reason) => {
    away = true;
    setStatus("disconnected", `disconnected: ${reason}`);
    setSending(false);
    $("instance").textContent = "-";
    addLog(`disconnected: ${reason}`);
    if (reason === "io server disconnect") chat.connect(); // the server closed it: no automatic retry
  });
  chat.on("connect_error", (error) => {
    addLog(`connection error: ${error.message}`);
    if (!chat.active) setStatus("refused", `refused: ${error.message}`); // the server said no: no retry
  });

  // --- rooms, presence and messages ---------------------------------------------------------------------
  function join(wanted) {
    const room = wanted.trim().slice(0, 64);
    if (!room) return;
    currentRoom = room;
    localStorage.setItem("demo.room", room);
    chat.emit("join", { room }, (reply) => {
      if (!reply || reply.error) {
        addLog(`join failed: ${reply ? reply.error : "no reply"}`);
        return;
      }
      currentRoom = reply.room;
      $("room-name").textContent = reply.room;
      if (reply.presence) showPresence(reply.presence);
      setSending(true);
    });
  }

  function showPresence(snapshot) {
    if (snapshot.room !== currentRoom || snapshot.version < presenceVersion) return; // late or other room
    presenceVersion = snapshot.version;
    const list = $("presence");
    list.replaceChildren(
      ...snapshot.members.map((member) => {
        const item = document.createElement("li");
        item.dataset.sid = member.sid;
        item.dataset.instance = member.instance;
        item.dataset.transport = member.transport;
        if (member.sid === chat.id) item.classList.add("me");
        for (const [cls, text] of [["user", member.user], ["instance", member.instance], ["transport", member.transport]]) {
          const span = document.createElement("span");
          span.className = cls;
          span.textContent = text;
          item.append(span);
        }
        return item;
      }),
    );
  }
  chat.on("presence", showPresence);

  function addMessage(kind, parts) {
    const list = $("messages");
    const item = document.createElement("li");
    item.className = kind;
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      item.append(span);
    }
    list.append(item);
    while (list.children.length > 200) list.firstChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  chat.on("message", (m) => {
    if (m.room !== currentRoom) return;
    const kind = (m.sid === chat.id ? "message mine" : "message") + (away ? " replayed" : "");
    addMessage(kind, [
      ["user", m.user],
      ["instance", m.instance],
      ["transport", m.transport],
      ["text", m.message],
    ]);
  });

  // anything pushed on the default namespace, e.g. `flask --app app emit announcement '{"text": "hi"}'`
  root.onAny((event, ...args) => {
    addMessage("push", [["event", event], ["text", JSON.stringify(args.length === 1 ? args[0] : args)]]);
  });

  // --- forms --------------------------------------------------------------------------------------------
  $("room-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (chat.connected) join(roomInput.value);
  });
  $("say-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const message = messageInput.value;
    if (!message.trim()) return;
    chat.timeout(5000).emit("say", { message }, (error, reply) => {
      if (error) addLog("message not acknowledged within 5s");
      else if (reply && reply.error) addLog(`message refused: ${reply.error}`);
      else messageInput.value = "";
    });
  });
  if (nameInput) {
    nameInput.addEventListener("change", () => {
      localStorage.setItem("demo.name", nameInput.value.trim());
      chat.disconnect().connect(); // the name goes in the connection's auth
    });
  }
})();
