// A real socket.io-client (npm) driven by the Python tests.
// Commands arrive as JSON lines on stdin; everything the client observes is printed as JSON lines.
//
//   {"cmd":"connect","url":"http://127.0.0.1:PORT","opts":{...socket.io-client options...},"nsp":"/"}
//   {"cmd":"emit","event":"name","args":[...],"ack":true|false,"id":N}
//   {"cmd":"drop"}        destroy the TCP connection under the current transport (a network blip)
//   {"cmd":"disconnect"}
//
// Server events that ask for an acknowledgement are answered with their own arguments.
//
// Binary values travel as {"$bin": "<base64>"} in both directions.
// connect_error lines carry {message, data} and, for a refused handshake, {status, detail, body}.
import { io } from "socket.io-client";
import readline from "node:readline";

let socket = null;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const toWire = (v) => {
  if (v && typeof v === "object" && typeof v.$bin === "string") return Buffer.from(v.$bin, "base64");
  if (Array.isArray(v)) return v.map(toWire);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toWire(x)]));
  return v;
};
const fromWire = (v) => {
  if (v instanceof ArrayBuffer) return { $bin: Buffer.from(v).toString("base64") };
  if (Buffer.isBuffer(v)) return { $bin: v.toString("base64") };
  if (Array.isArray(v)) return v.map(fromWire);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fromWire(x)]));
  return v;
};

function connect(cmd) {
  const url = cmd.url + (cmd.nsp && cmd.nsp !== "/" ? cmd.nsp : "");
  socket = io(url, cmd.opts || {});
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    out({ ev: "open", transport: engine.transport.name });
    engine.on("upgrade", (t) => out({ ev: "upgrade", transport: t.name }));
  });
  socket.on("connect", () => {
    const engine = socket.io.engine;
    out({ ev: "connect", id: socket.id, recovered: socket.recovered, transport: engine.transport.name });
  });
  socket.on("connect_error", (err) => out({
    ev: "connect_error",
    message: err.message,
    data: err.data ?? null,
    // A refused handshake is a transport error: its HTTP status, and (long-polling only) the body.
    status: typeof err.description === "number" ? err.description : null,
    detail: typeof err.description?.message === "string" ? err.description.message : null,
    body: err.context?.responseText ?? null,
  }));
  socket.on("disconnect", (reason) => out({ ev: "disconnect", reason }));
  socket.onAny((name, ...args) => {
    // A server event that asks for an acknowledgement: answer with the same arguments.
    const ack = typeof args.at(-1) === "function" ? args.pop() : null;
    out({ ev: "event", name, args: fromWire(args) });
    if (ack) ack(...args);
  });
  socket.io.on("reconnect_attempt", (n) => out({ ev: "reconnect_attempt", attempt: n }));
}

function drop() {
  const transport = socket.io.engine.transport;
  const raw = transport.ws && transport.ws._socket;
  if (raw) raw.destroy();
  else socket.io.engine.close();
  out({ ev: "dropped", transport: transport.name });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === "connect") connect(cmd);
  else if (cmd.cmd === "emit") {
    const args = toWire(cmd.args || []);
    if (cmd.ack) socket.emit(cmd.event, ...args, (...reply) => out({ ev: "ack", id: cmd.id ?? null, args: fromWire(reply) }));
    else socket.emit(cmd.event, ...args);
  } else if (cmd.cmd === "drop") drop();
  else if (cmd.cmd === "disconnect") socket.disconnect();
});
rl.on("close", () => process.exit(0));
out({ ev: "ready" });
