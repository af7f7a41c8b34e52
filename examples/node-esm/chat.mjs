// Print a Kick chatroom's live chat from a kichat gateway, with socket.io-client (ES modules).
//
//   npm ci                      # in this folder (or: npm install socket.io-client)
//   node chat.mjs [URL] [CHANNEL] [CHATROOM_ID]
//
// URL defaults to $KICHAT_URL or http://127.0.0.1:3000 (what `make demo` serves); CHANNEL and
// CHATROOM_ID to xqc and 668. Chat goes to stdout, one line per message; status to stderr.
import { io } from "socket.io-client";

const url = process.argv[2] ?? process.env.KICHAT_URL ?? "http://127.0.0.1:3000";
const channelName = process.argv[3] ?? "xqc";
const chatroomId = process.argv[4] ?? "668";

const socket = io(url, { transports: ["websocket", "polling"] });

socket.on("connect", () => {
  // After a network blip the gateway restores the session (socket.recovered): the subscription
  // is still there and every event missed meanwhile has been replayed. Otherwise (first
  // connection, gateway restarted) subscribe; subscribing twice is harmless.
  if (socket.recovered) return;
  socket.emit("subscribe", { channelName, chatroomId }, (reply) => {
    if (!reply.ok) {
      console.error(`subscribe refused: ${reply.error.code}: ${reply.error.message}`);
      process.exit(1);
    }
    if (reply.warning) console.error(`warning: ${reply.warning.code}: ${reply.warning.message}`);
    console.error(`subscribed to ${reply.channelName} (chatroom ${reply.chatroomId})`);
  });
});

socket.on("connect_error", (err) => console.error(`cannot connect to ${url}: ${err.message}`));

socket.on("App\\Events\\ChatMessageEvent", (data) => {
  console.log(`${data.channel_name} | ${data.sender.username}: ${data.content}`);
});

socket.on("App\\Events\\UserBannedEvent", (data) => {
  console.log(`${data.channel_name} | ${data.user.username} was banned by ${data.banned_by.username}`);
});

process.on("SIGINT", () => {
  socket.close();
  process.exit(0);
});
