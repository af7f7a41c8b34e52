// Unit tests of the overlay's page-independent logic (src/kichat/web/static/overlay-core.js),
// with Node's built-in test runner: `node --test tests/pages/overlay_core.test.cjs`
// (tests/pages/test_overlay_core.py runs it). The DOM side is tested in Chromium.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const core = require(path.join(__dirname, "../../src/kichat/web/static/overlay-core.js"));

const opts = (query) => core.parseOptions(new URLSearchParams(query));

test("emotes are split out of the text, in order", () => {
  assert.deepEqual(core.parseContent("gg [emote:37226:KEKW] nice [emote:1:a_b]"), [
    { text: "gg " },
    { emote: { id: "37226", name: "KEKW" } },
    { text: " nice " },
    { emote: { id: "1", name: "a_b" } },
  ]);
  assert.deepEqual(core.parseContent("[emote:5:x][emote:6:y]"), [
    { emote: { id: "5", name: "x" } },
    { emote: { id: "6", name: "y" } },
  ]);
});

test("what is not an emote token stays text", () => {
  for (const content of ["[emote:abc:n]", "[emote::n]", "[emote:1:a]b]", "[emote:1:n", "emote:1:n]"]) {
    const parts = core.parseContent(content);
    assert.equal(core.plainText(content), parts.map((p) => p.text || p.emote.name).join(""));
    if (content === "[emote:1:a]b]") {
      assert.deepEqual(parts, [{ emote: { id: "1", name: "a" } }, { text: "b]" }]);
    } else {
      assert.deepEqual(parts, [{ text: content }]);
    }
  }
});

test("hostile or odd content is bounded and never an object", () => {
  assert.deepEqual(core.parseContent(undefined), []);
  assert.deepEqual(core.parseContent({ toString: () => "x" }), []);
  assert.equal(core.plainText("x".repeat(10000)).length, 2000);
  const flood = "[emote:1:a]".repeat(500);
  const emotes = core.parseContent(flood).filter((p) => p.emote);
  assert.equal(emotes.length, 100);
  assert.equal(core.plainText("<b>[emote:1:<i>]</b>"), "<b><i></b>");
});

test("emote URLs come from the template with a numeric id only", () => {
  const t = "https://files.kick.com/emotes/{id}/fullsize";
  assert.equal(core.emoteUrl(t, "37226"), "https://files.kick.com/emotes/37226/fullsize");
  assert.equal(core.emoteUrl(t, "../x"), null);
  assert.equal(core.emoteUrl("", "1"), null);
});

test("options: defaults, bounds and bad values", () => {
  const d = opts("");
  assert.equal(d.theme, "transparent");
  assert.equal(d.fontSize, 18);
  assert.equal(d.limit, 50);
  assert.equal(d.fade, 0);
  assert.equal(d.hideCommands, false);
  assert.equal(d.badges, true);
  assert.equal(d.chatroomId, null);
  assert.equal(d.bots.size, 0);
  const o = opts("theme=DARK&fontSize=500&limit=0&fade=-1&hideCommands&badges=0&chatroomId=668");
  assert.equal(o.theme, "dark");
  assert.equal(o.fontSize, 96);
  assert.equal(o.limit, 1);
  assert.equal(o.fade, 0); // not digits: the default
  assert.equal(o.hideCommands, true);
  assert.equal(o.badges, false);
  assert.equal(o.chatroomId, "668");
  assert.equal(opts("theme=<x>&chatroomId=66a").theme, "transparent");
  assert.equal(opts("chatroomId=66a").chatroomId, null);
});

test("bots: the known list and the listed names, case-insensitively", () => {
  const o = opts("hideBots=1&bots=Annoying,%20Other%20,,");
  for (const name of ["botrix", "nightbot", "annoying", "other"]) assert.ok(o.bots.has(name), name);
  const msg = (username, content) => ({ sender: { username }, content });
  assert.equal(core.hiddenBy(msg("BotRix", "hi"), o), "bot");
  assert.equal(core.hiddenBy(msg("ANNOYING", "hi"), o), "bot");
  assert.equal(core.hiddenBy(msg("viewer", "hi"), o), null);
  assert.equal(core.hiddenBy(msg("botrix", "hi"), opts("bots=x")), null);
  const c = opts("hideCommands=true");
  assert.equal(core.hiddenBy(msg("viewer", "  !uptime"), c), "command");
  assert.equal(core.hiddenBy(msg("viewer", "hi !there"), c), null);
  assert.equal(core.hiddenBy(msg("viewer", "!uptime"), opts("")), null);
});

test("badges: short labels, subscriber months, unknown types as their text", () => {
  const sender = {
    identity: {
      badges: [
        { type: "broadcaster", text: "Broadcaster" },
        { type: "subscriber", text: "Subscriber", count: 4 },
        { type: "sub_gifter", text: "Sub Gifter", count: 25 },
        { type: "Weird Type!", text: "Brand new" },
        { text: "no type" },
        null,
      ],
    },
  };
  assert.deepEqual(core.badges(sender), [
    { type: "broadcaster", label: "HOST", title: "Broadcaster" },
    { type: "subscriber", label: "SUB 4", title: "Subscriber (4)" },
    { type: "sub_gifter", label: "GIFTER 25", title: "Sub Gifter (25)" },
    { type: "weirdtype", label: "Brand new", title: "Brand new" },
  ]);
  assert.deepEqual(core.badges({}), []);
  assert.deepEqual(core.badges({ identity: { badges: "x" } }), []);
});

test("colours: #rgb and #rrggbb only", () => {
  const c = (color) => core.color({ identity: { color } });
  assert.equal(c("#75FD46"), "#75FD46");
  assert.equal(c("#abc"), "#abc");
  for (const bad of ["red", "#12345", "#75FD46; background: url(x)", 7, null]) {
    assert.equal(c(bad), null);
  }
});

test("bans match by id, or by username without ids", () => {
  const msg = { sender: { id: 10, username: "Alice" } };
  assert.ok(core.bannedSender({ user: { id: 10, username: "someone" } }, msg));
  assert.ok(core.bannedSender({ user: { id: "10" } }, msg)); // 2023 payloads had string ids
  assert.ok(!core.bannedSender({ user: { id: 11, username: "alice" } }, msg));
  assert.ok(core.bannedSender({ user: { username: "ALICE" } }, msg));
  assert.ok(core.bannedSender({ user: { id: 10 } }, { sender: { username: "x", id: 10 } }));
  assert.ok(!core.bannedSender({ user: { username: "" } }, { sender: { username: "" } }));
  assert.ok(!core.bannedSender({}, msg));
  assert.ok(!core.bannedSender(null, msg));
});

test("replies name the original sender and quote its text", () => {
  const reply = {
    metadata: {
      original_sender: { id: "1649044", username: "PixelMoth" },
      original_message: { id: "m1", content: "gg [emote:37226:KEKW]" },
    },
  };
  assert.deepEqual(core.replyTo(reply), { username: "PixelMoth", text: "gg KEKW" });
  assert.equal(core.replyTo({ metadata: { message_ref: "1" } }), null);
  assert.equal(core.replyTo({}), null);
});
