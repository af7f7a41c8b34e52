// Many real socket.io-client connections to the gateway in one process, for refcount tests.
//
//   node relay_swarm.mjs <url> <count>
//
// Connects <count> clients over WebSocket and prints {"ev":"ready","connected":N}. Then, on
// stdin (one JSON command per line):
//   {"cmd":"subscribe","channelName":"xqc","chatroomId":"668"}    every client emits at once,
//       with an ack; prints {"ev":"subscribed","replies":[...]} once all have answered
//   {"cmd":"unsubscribe","channelName":"xqc","chatroomId":"668"}  same; {"ev":"unsubscribed",...}
//   {"cmd":"report"}      {"ev":"report","counts":[n per client],"names":{event: total},
//                          "channelNames":[...distinct channel_name values],"disconnects":N}
//   {"cmd":"disconnect"}  every client disconnects; {"ev":"disconnected"}
import { io } from "socket.io-client";
import readline from "node:readline";

const [url, countArg] = process.argv.slice(2);
const count = Number(countArg);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sockets = [];
const received = new Array(count).fill(0);
const names = {};
const channelNames = new Set();
let connected = 0;
let disconnects = 0;

for (let i = 0; i < count; i++) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
  sockets.push(socket);
  socket.onAny((name, data) => {
    received[i]++;
    names[name] = (names[name] || 0) + 1;
    if (data && typeof data === "object" && "channel_name" in data) channelNames.add(data.channel_name);
  });
  socket.on("disconnect", () => { disconnects++; });
  socket.on("connect_error", (err) => out({ ev: "connect_error", message: err.message }));
  socket.once("connect", () => {
    connected++;
    if (connected === count) out({ ev: "ready", connected });
  });
}

function everyone(event, payload, done) {
  const replies = new Array(count);
  let answered = 0;
  sockets.forEach((socket, i) => {
    socket.emit(event, payload, (reply) => {
      replies[i] = reply;
      answered++;
      if (answered === count) done(replies);
    });
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = JSON.parse(line);
  const payload = { channelName: cmd.channelName, chatroomId: cmd.chatroomId };
  if (cmd.cmd === "subscribe") everyone("subscribe", payload, (replies) => out({ ev: "subscribed", replies }));
  else if (cmd.cmd === "unsubscribe") everyone("unsubscribe", payload, (replies) => out({ ev: "unsubscribed", replies }));
  else if (cmd.cmd === "report") {
    out({ ev: "report", counts: received, names, channelNames: [...channelNames].sort(), disconnects });
  } else if (cmd.cmd === "disconnect") {
    for (const socket of sockets) socket.disconnect();
    out({ ev: "disconnected" });
  }
});
rl.on("close", () => process.exit(0));
