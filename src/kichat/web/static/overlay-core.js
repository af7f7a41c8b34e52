// kichat overlay: the logic that does not touch the page (options, emotes, badges, filters).
// Plain script for browsers (window.KichatOverlay) and CommonJS for `node --test`.
// Chat is hostile input: nothing here builds HTML; the page turns these values into DOM nodes.
(function (root) {
  "use strict";

  // Bots streamers usually hide (matched case-insensitively against the sender's username).
  const KNOWN_BOTS = Object.freeze([
    "botrix", "botrixoficial", "kickbot", "kicklet", "sery_bot", "fossabot",
    "streamelements", "nightbot", "moobot", "wizebot", "streamlabs",
  ]);
  const THEMES = Object.freeze(["transparent", "dark", "light"]);
  const MAX_CONTENT = 2000; // Kick caps messages at 500 characters; anything longer is cut
  const MAX_EMOTES = 100; // per message: a flood of images cannot stall the page
  const EMOTE_RE = /\[emote:(\d{1,20}):([^\]\[]{0,100})\]/g;

  // Short labels for Kick's badge types; unknown types show their own text.
  const BADGES = Object.freeze({
    broadcaster: "HOST",
    moderator: "MOD",
    vip: "VIP",
    og: "OG",
    founder: "FOUNDER",
    subscriber: "SUB",
    sub_gifter: "GIFTER",
    verified: "\u2713",
  });

  function flag(value) {
    return value !== null && ["1", "true", "yes", "on", ""].includes(value.toLowerCase());
  }

  function intIn(value, lo, hi, fallback) {
    if (value === null || !/^\d{1,6}$/.test(value)) return fallback;
    return Math.min(hi, Math.max(lo, Number(value)));
  }

  // Options from the page's query string (a URLSearchParams). Bad values fall back to defaults.
  function parseOptions(params) {
    const theme = (params.get("theme") || "").toLowerCase();
    const chatroomId = params.get("chatroomId");
    const bots = new Set();
    if (flag(params.get("hideBots"))) KNOWN_BOTS.forEach((b) => bots.add(b));
    for (const name of (params.get("bots") || "").split(",")) {
      const clean = name.trim().toLowerCase();
      if (clean) bots.add(clean);
    }
    return {
      chatroomId: chatroomId && /^\d{1,12}$/.test(chatroomId) ? chatroomId : null,
      theme: THEMES.includes(theme) ? theme : "transparent",
      fontSize: intIn(params.get("fontSize"), 8, 96, 18),
      limit: intIn(params.get("limit"), 1, 500, 50),
      fade: intIn(params.get("fade"), 0, 86400, 0),
      hideCommands: flag(params.get("hideCommands")),
      badges: params.get("badges") === null || flag(params.get("badges")),
      bots,
      token: params.get("token") || null,
    };
  }

  // Text and emotes of a message, in order: [{text}] and [{emote: {id, name}}].
  function parseContent(content) {
    const text = typeof content === "string" ? content.slice(0, MAX_CONTENT) : "";
    const parts = [];
    let last = 0;
    let emotes = 0;
    EMOTE_RE.lastIndex = 0;
    for (let m = EMOTE_RE.exec(text); m !== null; m = EMOTE_RE.exec(text)) {
      if (emotes === MAX_EMOTES) break;
      if (m.index > last) parts.push({ text: text.slice(last, m.index) });
      parts.push({ emote: { id: m[1], name: m[2] } });
      last = m.index + m[0].length;
      emotes += 1;
    }
    if (last < text.length) parts.push({ text: text.slice(last) });
    return parts;
  }

  // The text of a message with emotes as their names (replies' quoted text, tooltips).
  function plainText(content) {
    return parseContent(content)
      .map((p) => (p.emote ? p.emote.name : p.text))
      .join("");
  }

  function emoteUrl(template, id) {
    if (!template || !/^\d{1,20}$/.test(String(id))) return null;
    return template.replace("{id}", encodeURIComponent(String(id)));
  }

  // Badges to show: [{type, label, title}], label kept short, title the full text.
  function badges(sender) {
    const list = sender && sender.identity && Array.isArray(sender.identity.badges)
      ? sender.identity.badges
      : [];
    const out = [];
    for (const badge of list.slice(0, 10)) {
      if (!badge || typeof badge.type !== "string") continue;
      const type = badge.type.toLowerCase().replace(/[^a-z0-9_]/g, "").slice(0, 32);
      const text = typeof badge.text === "string" ? badge.text.slice(0, 40) : type;
      let label = Object.prototype.hasOwnProperty.call(BADGES, type) ? BADGES[type] : text;
      const count = Number.isInteger(badge.count) && badge.count > 0 ? badge.count : null;
      if (count !== null && (type === "subscriber" || type === "sub_gifter")) label += ` ${count}`;
      out.push({ type, label: label.slice(0, 20), title: count ? `${text} (${count})` : text });
    }
    return out;
  }

  // A colour we accept from Kick: #rgb or #rrggbb (anything else gets the theme's colour).
  function color(sender) {
    const value = sender && sender.identity && sender.identity.color;
    return typeof value === "string" && /^#(?:[0-9a-fA-F]{3}){1,2}$/.test(value) ? value : null;
  }

  function username(sender) {
    const name = sender && sender.username;
    return typeof name === "string" ? name.slice(0, 64) : "";
  }

  // Why a message is hidden by the options, or null to show it.
  function hiddenBy(message, options) {
    const name = username(message && message.sender).toLowerCase();
    if (name && options.bots.has(name)) return "bot";
    const content = message && typeof message.content === "string" ? message.content : "";
    if (options.hideCommands && content.trimStart().startsWith("!")) return "command";
    return null;
  }

  // Does a UserBannedEvent's payload name this message's sender? By id, or by username when
  // either side has no id (older payloads).
  function bannedSender(ban, message) {
    const user = ban && ban.user;
    const sender = message && message.sender;
    if (!user || !sender) return false;
    if (user.id !== undefined && user.id !== null && sender.id !== undefined && sender.id !== null) {
      return String(user.id) === String(sender.id);
    }
    const a = typeof user.username === "string" ? user.username.toLowerCase() : "";
    return a !== "" && a === username(sender).toLowerCase();
  }

  // The replied-to message of a reply, or null.
  function replyTo(message) {
    const meta = message && message.metadata;
    if (!meta || typeof meta !== "object") return null;
    const sender = meta.original_sender;
    const original = meta.original_message;
    if (!sender || !original) return null;
    return {
      username: typeof sender.username === "string" ? sender.username.slice(0, 64) : "",
      text: plainText(original.content).slice(0, 120),
    };
  }

  const api = {
    KNOWN_BOTS, THEMES, BADGES, parseOptions, parseContent, plainText, emoteUrl, badges,
    color, username, hiddenBy, bannedSender, replyTo,
  };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.KichatOverlay = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
