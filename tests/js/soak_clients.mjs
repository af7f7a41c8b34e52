// Real socket.io-client clients for bench/soak.py: they subscribe like the README says (in the
// "connect" handler unless the session was recovered), and now and then lose their transport
// (the TCP connection is destroyed under them) and recover through socket.io-client's own
// connection state recovery.
//
//   node soak_clients.mjs <url> <count> <rooms> <mean seconds between blips> <seed>
//
// Client i watches chatroom i % rooms (slug "chan<r>", id 700000 + r). Prints
// {"ev":"ready"} once every client has subscribed; on stdin {"cmd":"report"} it prints
// {"ev":"report","blips":N,"recovered":N,"not_recovered":N,"periods":[{"room":r,"seqs":[...],
// "dups":N}]} and on {"cmd":"stop"} it disconnects everyone and exits.
import { io } from "socket.io-client";
import readline from "node:readline";

const [url, countArg, roomsArg, blipArg, seedArg] = process.argv.slice(2);
const count = Number(countArg);
const rooms = Number(roomsArg);
const blipMean = Number(blipArg) * 1000;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

let seed = Number(seedArg) || 1;
const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const expo = (mean) => -Math.log(1 - random()) * mean;

const periods = [];
const stats = { blips: 0, recovered: 0, not_recovered: 0 };
const sockets = [];
let subscribed = 0;

for (let i = 0; i < count; i++) {
  const room = i % rooms;
  const socket = io(url, {
    transports: ["websocket"],
    forceNew: true,
    reconnectionDelay: 300,
    reconnectionDelayMax: 2000,
  });
  sockets.push(socket);
  let period = null;
  let first = true;
  socket.on("connect", () => {
    if (!first) stats[socket.recovered ? "recovered" : "not_recovered"]++;
    if (socket.recovered) return;
    period = { room, seqs: [], dups: 0 };
    periods.push(period);
    socket.emit("subscribe", { channelName: `chan${room}`, chatroomId: String(700000 + room) }, (reply) => {
      if (first && ++subscribed === count) out({ ev: "ready" });
      first = false;
    });
  });
  socket.on("App\\Events\\ChatMessageEvent", (data) => {
    if (!period) return;
    const seq = Number(String(data.content).split(" ")[0]);
    const seqs = period.seqs;
    if (seqs.length && seq <= seqs[seqs.length - 1] && seqs.includes(seq)) period.dups++;
    else seqs.push(seq);
  });
  const blip = () => {
    setTimeout(() => {
      const raw = socket.io.engine?.transport?.ws?._socket;
      if (socket.connected && raw) {
        stats.blips++;
        raw.destroy();
      }
      blip();
    }, expo(blipMean));
  };
  blip();
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === "report") out({ ev: "report", ...stats, periods });
  else if (cmd.cmd === "stop") {
    for (const socket of sockets) socket.disconnect();
    process.exit(0);
  }
});
rl.on("close", () => process.exit(0));
