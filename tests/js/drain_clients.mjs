// Real socket.io-client connections that subscribe like the README's example, for the graceful
// drain test: they see the gateway go away, reconnect, and subscribe again on a new session.
//
//   node drain_clients.mjs <url> <count> <transport: websocket|polling> <channelName> <chatroomId>
//
// Each client connects with reconnection on, and subscribes in its "connect" handler unless the
// session was recovered. Printed, one JSON object per line:
//   {"ev":"subscribed","i":N,"reply":{...},"session":K}   K: 1 for the first session, 2 after...
//   {"ev":"ready"}                                        every client's first subscribe answered
//   {"ev":"disconnect","i":N,"reason":"transport close","description":"...","code":1001|null,
//    "seqs":[n, ...]}                                      the chat messages seen before it
//   {"ev":"connect","i":N,"recovered":false,"session":K}
//   {"ev":"chat","i":N,"n":n,"session":K}                 only after the first disconnect
// A chat message's number is its "content".
import { io } from "socket.io-client";

const [url, countArg, transport, channelName, chatroomId] = process.argv.slice(2);
const count = Number(countArg);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
let subscribedOnce = 0;

for (let i = 0; i < count; i++) {
  const socket = io(url, {
    transports: [transport],
    forceNew: true,
    reconnectionDelay: 200,
    reconnectionDelayMax: 500,
  });
  const seqs = [];
  let session = 0;
  let disconnected = false;
  socket.on("connect", () => {
    session++;
    out({ ev: "connect", i, recovered: socket.recovered, session });
    if (socket.recovered) return;
    const current = session;
    socket.emit("subscribe", { channelName, chatroomId }, (reply) => {
      out({ ev: "subscribed", i, reply, session: current });
      if (current === 1 && ++subscribedOnce === count) out({ ev: "ready" });
    });
  });
  socket.on("App\\Events\\ChatMessageEvent", (data) => {
    const n = Number(data.content);
    if (disconnected) out({ ev: "chat", i, n, session });
    else seqs.push(n);
  });
  socket.on("disconnect", (reason, details) => {
    if (disconnected) return;
    disconnected = true;
    out({
      ev: "disconnect", i, reason,
      description: details?.description ?? null,
      code: details?.context?.code ?? null,
      seqs,
    });
  });
}
process.stdin.on("close", () => process.exit(0));
process.stdin.resume();
