// pusher-js (the official client, from npm) connected to the Kick simulator.
//
//   node sim_pusher_client.mjs --host 127.0.0.1 --port 7070 [--key KEY] [--channels a,b]
//
// Prints one JSON object per line on stdout:
//   {"type":"state","previous":..,"current":..}     connection state changes
//   {"type":"connected","socket_id":..}
//   {"type":"error","error":{...}}                   pusher-js connection errors (e.g. code 4001)
//   {"type":"subscribed","channel":..,"data":..}     pusher:subscription_succeeded
//   {"type":"subscription_error","channel":..,"data":..}
//   {"type":"event","channel":..,"event":..,"data":..}   data as decoded by pusher-js
// Reads JSON commands on stdin, one per line: {"cmd":"subscribe","channel":..},
// {"cmd":"unsubscribe","channel":..}, {"cmd":"disconnect"}.
import readline from 'node:readline';
import Pusher from 'pusher-js';

const arg = (name, dflt) => {
  const i = process.argv.indexOf('--' + name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const pusher = new Pusher(arg('key', '32cbd69e4b950bf97679'), {
  cluster: 'us2',
  wsHost: arg('host', '127.0.0.1'),
  wsPort: Number(arg('port', '7070')),
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
});

pusher.connection.bind('state_change', (s) => out({ type: 'state', previous: s.previous, current: s.current }));
pusher.connection.bind('connected', () => out({ type: 'connected', socket_id: pusher.connection.socket_id }));
pusher.connection.bind('error', (err) => out({ type: 'error', error: err }));

function subscribe(name) {
  const channel = pusher.subscribe(name);
  channel.bind('pusher:subscription_succeeded', (data) => out({ type: 'subscribed', channel: name, data }));
  channel.bind('pusher:subscription_error', (data) => out({ type: 'subscription_error', channel: name, data }));
  channel.bind_global((event, data) => {
    if (!event.startsWith('pusher:')) out({ type: 'event', channel: name, event, data });
  });
}

for (const name of (arg('channels', '') || '').split(',').filter(Boolean)) subscribe(name);

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const msg = JSON.parse(line);
  if (msg.cmd === 'subscribe') subscribe(msg.channel);
  else if (msg.cmd === 'unsubscribe') pusher.unsubscribe(msg.channel);
  else if (msg.cmd === 'disconnect') {
    pusher.disconnect();
    setTimeout(() => process.exit(0), 50);
  }
});
