// kichat overlay: live chat of one channel, for OBS browser sources and browsers.
// Chat is hostile input: every value reaches the page as a text node or a checked property,
// never as HTML. The page's state is on <html data-state> (loading, lookup-failed, connecting,
// live, disconnected, refused, no-client) for tests and for styling the notice.
(function () {
  "use strict";

  const core = window.KichatOverlay;
  const config = JSON.parse(document.getElementById("kichat-config").textContent);
  const options = core.parseOptions(new URLSearchParams(location.search));
  const root = new URL(config.root, location.href);
  const html = document.documentElement;
  const chat = document.getElementById("chat");
  const notice = document.getElementById("notice");
  const pinned = document.getElementById("pinned");
  const messages = new Map(); // message id -> {el, sender}
  let pinTimer = null;

  html.classList.add(`theme-${options.theme}`);
  html.style.fontSize = `${options.fontSize}px`;
  if (!options.badges) html.classList.add("no-badges");

  function setState(state, text) {
    html.dataset.state = state;
    notice.textContent = text || "";
    notice.hidden = !text;
  }

  // -- rendering ---------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function emoteNode(emote) {
    const url = core.emoteUrl(config.emoteUrl, emote.id);
    const fallback = el("span", "emote-text", emote.name || `emote ${emote.id}`);
    if (!url) return fallback;
    const img = el("img", "emote");
    img.alt = emote.name;
    img.title = emote.name;
    img.decoding = "async";
    // Offline, blocked or missing images show the emote's name instead.
    img.addEventListener("error", () => img.replaceWith(fallback), { once: true });
    img.src = url;
    return img;
  }

  function messageNode(tag, data) {
    const node = el(tag, "msg");
    const reply = core.replyTo(data);
    if (reply) node.append(el("div", "reply", `\u21aa @${reply.username}: ${reply.text}`));
    const badgeList = core.badges(data.sender);
    if (badgeList.length) {
      const box = el("span", "badges");
      for (const b of badgeList) {
        const badge = el("span", `badge badge-${b.type}`, b.label);
        badge.title = b.title;
        box.append(badge);
      }
      node.append(box);
    }
    const user = el("span", "user", core.username(data.sender));
    const colour = core.color(data.sender);
    if (colour) user.style.color = colour;
    node.append(user, el("span", "sep", ": "));
    const content = el("span", "content");
    for (const part of core.parseContent(data.content)) {
      content.append(part.emote ? emoteNode(part.emote) : document.createTextNode(part.text));
    }
    node.append(content);
    if (data.type === "celebration") node.classList.add("celebration");
    return node;
  }

  function remove(id) {
    const entry = messages.get(id);
    if (!entry) return;
    messages.delete(id);
    entry.el.remove();
  }

  function addMessage(data) {
    if (!data || typeof data.id !== "string" || messages.has(data.id)) return;
    if (core.hiddenBy(data, options)) return;
    const node = messageNode("li", data);
    node.dataset.id = data.id;
    messages.set(data.id, { el: node, sender: data.sender });
    chat.append(node);
    while (messages.size > options.limit) remove(messages.keys().next().value);
    if (options.fade > 0) {
      setTimeout(() => {
        node.classList.add("fading");
        setTimeout(() => remove(data.id), 600);
      }, options.fade * 1000);
    }
  }

  function removeBanned(ban) {
    for (const [id, entry] of [...messages]) {
      if (core.bannedSender(ban, { sender: entry.sender })) remove(id);
    }
  }

  function clearChat() {
    for (const id of [...messages.keys()]) remove(id);
  }

  function showPinned(data) {
    const message = data && data.message;
    if (!message || typeof message !== "object") return;
    const by = data.pinnedBy && core.username(data.pinnedBy);
    document.getElementById("pinned-by").textContent = by ? ` by ${by}` : "";
    document.getElementById("pinned-message").replaceChildren(messageNode("div", message));
    pinned.hidden = false;
    clearTimeout(pinTimer);
    const seconds = Number(data.duration);
    if (Number.isFinite(seconds) && seconds > 0 && seconds <= 86400) {
      pinTimer = setTimeout(hidePinned, seconds * 1000);
    }
  }

  function hidePinned() {
    clearTimeout(pinTimer);
    pinned.hidden = true;
    document.getElementById("pinned-message").replaceChildren();
  }

  // -- the chatroom id ---------------------------------------------------------------------------

  async function lookUpChatroom() {
    const url = new URL(`api/v2/channels/${encodeURIComponent(config.channel)}`, root);
    const headers = options.token ? { "X-API-Key": options.token } : {};
    let response;
    try {
      response = await fetch(url, { headers, cache: "no-store" });
    } catch (err) {
      throw new Error("the gateway did not answer");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (response.ok) {
      const id = body && body.chatroom && body.chatroom.id;
      if (Number.isInteger(id) && id > 0) return String(id);
      throw new Error("Kick's answer has no chatroom id");
    }
    if (response.status === 404) throw new Error(`Kick has no channel named "${config.channel}"`);
    const why = body && body.error && typeof body.error.message === "string"
      ? `: ${body.error.message.slice(0, 200)}` : "";
    throw new Error(`looking it up on Kick failed (HTTP ${response.status}${why})`);
  }

  async function chatroomId() {
    if (options.chatroomId) return options.chatroomId;
    for (let wait = 15; ; wait = Math.min(wait * 2, 120)) {
      try {
        return await lookUpChatroom();
      } catch (err) {
        setState("lookup-failed",
          `Cannot show chat of "${config.channel}": ${err.message}. Add ?chatroomId=<id> to ` +
          `the overlay URL if you know it. Trying again in ${wait} s.`);
        await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      }
    }
  }

  // -- the stream --------------------------------------------------------------------------------

  function connect(id) {
    const payload = { channelName: config.channel, chatroomId: id };
    const socket = io(root.origin, {
      path: root.pathname + config.socketioPath.replace(/^\//, ""),
      transports: ["websocket", "polling"],
      auth: options.token ? { token: options.token } : {},
    });
    window.kichatSocket = socket; // for debugging from the console

    function subscribe() {
      socket.timeout(20000).emit("subscribe", payload, (err, reply) => {
        if (err) {
          if (socket.connected) subscribe(); // no answer in time: ask again
          return;
        }
        if (reply && reply.ok) {
          setState("live", "");
        } else {
          const e = (reply && reply.error) || {};
          setState("refused", `The gateway refused chat of "${config.channel}": ${e.message || e.code}`);
        }
      });
    }

    socket.on("connect", () => {
      // A recovered session still holds its room; a new one (gateway restart, long gap) must
      // subscribe again. Subscribing twice is harmless.
      if (socket.recovered) setState("live", "");
      else {
        setState("connecting", "");
        subscribe();
      }
    });
    socket.on("disconnect", (reason) => {
      setState("disconnected", "Disconnected from the gateway, reconnecting\u2026");
      if (reason === "io server disconnect") socket.connect(); // the client would not retry
    });
    socket.on("connect_error", (err) => {
      const code = err && err.data && err.data.code;
      if (socket.active) {
        setState("disconnected", "Cannot reach the gateway, retrying\u2026");
      } else {
        setState("refused", `The gateway refused the connection: ${err.message}`);
        if (code !== "unauthorized") setTimeout(() => socket.connect(), 10000);
      }
    });

    socket.on("App\\Events\\ChatMessageEvent", addMessage);
    socket.on("App\\Events\\MessageDeletedEvent", (d) => d && d.message && remove(d.message.id));
    socket.on("App\\Events\\UserBannedEvent", removeBanned);
    socket.on("App\\Events\\ChatroomClearEvent", clearChat);
    socket.on("App\\Events\\PinnedMessageCreatedEvent", showPinned);
    socket.on("App\\Events\\PinnedMessageDeletedEvent", hidePinned);
  }

  async function main() {
    if (typeof window.io !== "function") {
      setState("no-client", "The gateway does not serve socket.io-client yet (socket.io.js): " +
        "its operator must run `make assets` or set pages.socketio_client_dir.");
      return;
    }
    setState("loading", "");
    connect(await chatroomId());
  }

  main();
})();
