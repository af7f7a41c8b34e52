// The "Complete Example" ChatService of kichat-chatroom-stream.md, as close to verbatim as a test
// allows: TypeScript types removed, the URL and `transports` come from argv, a listener for each
// of the twelve events the page lists, and what it receives is printed as JSON lines instead of
// console.log. It subscribes exactly like the page's "Usage Example": right after connect(),
// without waiting for the connection and without an acknowledgement.
//
//   node chatservice.mjs <url> '<transports as JSON, e.g. ["websocket","polling"]>'
//
// Output lines: {"ev":"event","name":...,"data":...} per chat event, {"ev":"log","text":...}
// for the page's own log lines, and (instrumentation outside the class, for the test)
// {"ev":"open"|"upgrade","transport":...}, {"ev":"disconnect"|"connect_error",...} and
// {"ev":"error"|"warning","data":...} if the gateway reports a problem.
import { io } from 'socket.io-client'

const [url, transportsArg] = process.argv.slice(2)
const transports = JSON.parse(transportsArg)
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const print = (name, data) => out({ ev: 'event', name, data })

// The events of the page's "Chat Events" table, in its order.
const CHAT_EVENTS = [
  'App\\Events\\ChatMessageEvent',
  'App\\Events\\MessageDeletedEvent',
  'App\\Events\\UserBannedEvent',
  'App\\Events\\UserUnbannedEvent',
  'App\\Events\\ChatroomClearEvent',
  'App\\Events\\ChatroomUpdatedEvent',
  'App\\Events\\PollUpdateEvent',
  'App\\Events\\PollDeleteEvent',
  'App\\Events\\PinnedMessageCreatedEvent',
  'App\\Events\\PinnedMessageDeletedEvent',
  'App\\Events\\SubscriptionEvent',
  'App\\Events\\LivestreamUpdated',
]

export class ChatService {
  socket = null

  connect() {
    this.socket = io(url, {
      path: '/socket.io/',
      transports
    })

    this.socket.on('connect', () => {
      out({ ev: 'log', text: 'Connection established' })
    })

    this.setupEventListeners()
  }

  setupEventListeners() {
    this.socket?.on('App\\Events\\ChatMessageEvent', (data) => {
      print('App\\Events\\ChatMessageEvent', data)
      out({ ev: 'log', text: `${data.channel_name} | ${data.sender.username}: ${data.content}` })
    })

    this.socket?.on('App\\Events\\UserBannedEvent', (data) => {
      print('App\\Events\\UserBannedEvent', data)
    })

    // The page shows two listeners; a client of the whole table adds the other ten the same way.
    for (const name of CHAT_EVENTS) {
      if (name === 'App\\Events\\ChatMessageEvent' || name === 'App\\Events\\UserBannedEvent') continue
      this.socket?.on(name, (data) => {
        print(name, data)
      })
    }
  }

  subscribeToChannel(channelName, chatroomId) {
    this.socket?.emit('subscribe', { channelName, chatroomId })
  }

  disconnect() {
    this.socket?.disconnect()
    this.socket = null
  }
}

// Usage Example, as on the page.
const chatService = new ChatService()
chatService.connect()
chatService.subscribeToChannel("xqc", "668")

// Instrumentation for the test (not part of the page's example).
const socket = chatService.socket
socket.io.on('open', () => {
  const engine = socket.io.engine
  out({ ev: 'open', transport: engine.transport.name })
  engine.on('upgrade', (t) => out({ ev: 'upgrade', transport: t.name }))
})
socket.on('disconnect', (reason) => out({ ev: 'disconnect', reason }))
socket.on('connect_error', (err) => out({ ev: 'connect_error', message: err.message }))
socket.on('error', (data) => out({ ev: 'error', data }))
socket.on('warning', (data) => out({ ev: 'warning', data }))
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
