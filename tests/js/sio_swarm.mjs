// Many real socket.io-client connections in one process, for fan-out tests.
//
//   node sio_swarm.mjs <url> <count> <room> <event>
//
// Each client connects over WebSocket and emits "join" <room> with an ack. Prints
// {"ev":"ready","connected":N} once all have joined, then on the stdin command
// {"cmd":"report"} prints {"ev":"report","counts":{min,max,total},"disconnects":N}.
import { io } from "socket.io-client";
import readline from "node:readline";

const [url, countArg, room, eventName] = process.argv.slice(2);
const count = Number(countArg);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const received = new Array(count).fill(0);
let joined = 0;
let disconnects = 0;

for (let i = 0; i < count; i++) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
  socket.on(eventName, () => { received[i]++; });
  socket.on("disconnect", () => { disconnects++; });
  socket.on("connect_error", (err) => out({ ev: "connect_error", message: err.message }));
  socket.once("connect", () => {
    socket.emit("join", room, () => {
      joined++;
      if (joined === count) out({ ev: "ready", connected: joined });
    });
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === "report") {
    out({
      ev: "report",
      counts: { min: Math.min(...received), max: Math.max(...received), total: received.reduce((a, b) => a + b, 0) },
      disconnects,
    });
  }
});
rl.on("close", () => process.exit(0));
