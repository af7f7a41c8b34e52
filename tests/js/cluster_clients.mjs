// Many real socket.io-client connections that subscribe, recover and count, for cluster tests.
//
//   node cluster_clients.mjs <url> <count> <transports, e.g. websocket or polling> <rooms JSON>
//
// <rooms JSON> is a list of {channelName, chatroomId}. Each client subscribes to every room in
// its "connect" handler unless the connection was recovered (the README's recommended pattern),
// and records the id of every ChatMessageEvent in arrival order. Prints {"ev":"ready"} once every
// client has connected and subscribed. Commands on stdin, one JSON object per line:
//   {"cmd":"report"}  -> {"ev":"report","clients":[{"connected":bool,"ids":[...],"connects":N,"recovered":N,
//                        "names":[distinct channel_name values],"errors":[...]}]}
//   {"cmd":"close"}   -> every client disconnects (no session is left to be recovered);
//                        {"ev":"closed"} once every connection is closed
import { io } from "socket.io-client";
import readline from "node:readline";

const [url, countArg, transportsArg, roomsArg] = process.argv.slice(2);
const count = Number(countArg);
const transports = transportsArg.split(",");
const rooms = JSON.parse(roomsArg);
const CHAT = "App\\Events\\ChatMessageEvent";
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const clients = [];
let ready = 0;

for (let i = 0; i < count; i++) {
  const state = { ids: [], connects: 0, recovered: 0, names: new Set(), errors: [], subscribed: false };
  const socket = io(url, {
    transports,
    forceNew: true,
    reconnectionDelay: 50,
    reconnectionDelayMax: 300,
    randomizationFactor: 0,
  });
  clients.push({ socket, state });
  socket.on("connect", async () => {
    state.connects++;
    if (socket.recovered) {
      state.recovered++;
      return;
    }
    for (const room of rooms) {
      try {
        const reply = await socket.timeout(20000).emitWithAck("subscribe", room);
        if (!reply.ok) state.errors.push(reply.error.code);
      } catch (err) {
        state.errors.push("no ack: " + err.message);
      }
    }
    if (!state.subscribed) {
      state.subscribed = true;
      ready++;
      if (ready === count) out({ ev: "ready" });
    }
  });
  socket.on("connect_error", (err) => state.errors.push("connect_error: " + err.message));
  socket.onAny((name, data) => {
    if (name === CHAT && data && typeof data === "object") {
      state.ids.push(data.id);
      state.names.add(data.channel_name);
    }
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === "report") {
    out({
      ev: "report",
      clients: clients.map(({ socket, state }) => ({
        connected: socket.connected,
        ids: state.ids, connects: state.connects, recovered: state.recovered,
        names: [...state.names], errors: state.errors,
      })),
    });
  } else if (cmd.cmd === "close") {
    const closed = clients.map(({ socket }) => new Promise((resolve) => {
      const engine = socket.io.engine;
      if (!engine || engine.readyState === "closed") resolve();
      else engine.once("close", resolve);
      socket.disconnect();
    }));
    Promise.all(closed).then(() => out({ ev: "closed" }));
  }
});
