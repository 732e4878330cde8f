// homefeed live feed: pick a user, rank a fixed candidate set with /rank, send save / click / hide
// through the events API, then re-rank once the ranking service has seen the action. Every render
// also logs what it showed (one impression per card, POST /v1/impressions, fire and forget: it
// never holds up an action); window.feedImpressions holds each batch's accepted count.
// Timings: performance marks "click-N" / "ranked-N" and measure "click-to-rank-N" per action;
// window.feedTimings holds the same numbers (ms) for tests and the page's own stats.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const WAIT_MS = 5000;          // give up waiting for an action to show after this long
  const POLL_MS = 40;            // pause between /rank polls while waiting
  const ACTIONS = { save: "repin", click: "click", hide: "hide" };
  const DONE = { save: "saved", click: "clicked", hide: "hidden" };
  const state = { user: null, candidates: [], order: [], busy: false, n: 0,
                  lastEventTime: 0, acted: new Map() };
  window.feedTimings = [];
  window.feedImpressions = [];
  window.feedState = state;

  const topicColour = (t) => (t === null || t === undefined) ? "#999" : `hsl(${(t * 47) % 360} 55% 42%)`;

  async function call(method, url, body) {
    const resp = await fetch(url, { method, headers: { "content-type": "application/json" },
                                    body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
    if (!resp.ok) {
      const err = new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  function showError(message) { $("error").textContent = message || ""; }

  async function rank() {
    return call("POST", "/v1/feed/rank", { user_id: state.user, candidates: state.candidates });
  }

  function logImpressions(result) {
    const shownAt = Date.now();  // one render = one request: its id is the time it was shown
    const events = result.items.map((it) => ({
      schema_version: 1, event_id: `web-imp-${state.user}-${shownAt}-${it.pin_id}`, user_id: state.user,
      pin_id: it.pin_id, event_time: shownAt, surface: "homefeed", request_id: shownAt }));
    if (!events.length) return;
    call("POST", "/v1/impressions", events)
      .then((out) => window.feedImpressions.push(out.accepted))
      .catch((e) => showError(`impressions not logged: ${e.message}`));
  }

  function render(result, movedFrom) {
    logImpressions(result);
    const feed = $("feed");
    const old = new Map(state.order.map((pin, i) => [pin, i]));
    state.order = result.items.map((it) => it.pin_id);
    $("degraded").hidden = !result.degraded;
    feed.replaceChildren(...result.items.map((it, i) => card(it, i, movedFrom ? old : null)));
    feed.dataset.order = state.order.join(",");
  }

  function card(item, i, old) {
    const li = document.createElement("li");
    const topic = item.topic_id;  // /v1/feed/rank adds each pin's topic
    li.className = "card";
    li.dataset.pin = item.pin_id;
    li.dataset.topic = topic;
    li.dataset.rank = i + 1;
    li.style.setProperty("--topic", topicColour(topic));
    let move = "";
    if (old) {
      if (!old.has(item.pin_id)) { move = "new"; li.classList.add("new"); }
      else if (old.get(item.pin_id) > i) { move = `▲ ${old.get(item.pin_id) - i}`; li.classList.add("up"); }
      else if (old.get(item.pin_id) < i) { move = `▼ ${i - old.get(item.pin_id)}`; li.classList.add("down"); }
    }
    const heads = Object.entries(item.heads || {}).map(([h, v]) => `${h} ${v.toFixed(3)}`).join(" · ");
    li.innerHTML = `<div class="top"><span class="rank">#${i + 1}</span><span class="move"></span></div>
      <span class="topic"></span> <span class="pin"></span>
      <div class="heads"></div><div class="acted"></div>
      <div class="actions"><button data-act="save">save</button><button data-act="click">click</button>
      <button data-act="hide">hide</button></div>`;
    li.querySelector(".move").textContent = move;
    li.querySelector(".topic").textContent = `topic ${topic}`;
    li.querySelector(".pin").textContent = `pin ${item.pin_id}`;
    li.querySelector(".heads").textContent = heads;
    li.querySelector(".acted").textContent = state.acted.get(item.pin_id) || "";
    li.querySelectorAll("button").forEach((b) => { b.disabled = state.busy; });
    return li;
  }

  function setBusy(busy) {
    state.busy = busy;
    document.querySelectorAll("#feed button").forEach((b) => { b.disabled = busy; });
    $("feed").dataset.busy = busy ? "1" : "0";
  }

  function percentile(values, p) {
    const s = [...values].sort((a, b) => a - b);
    return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : NaN;
  }

  async function act(pin, what) {
    if (state.busy) return;
    setBusy(true);
    showError("");
    const n = ++state.n;
    const eventTime = Math.max(Date.now(), state.lastEventTime + 1);
    state.lastEventTime = eventTime;
    performance.mark(`click-${n}`);
    const event = { schema_version: 1, event_id: `web-${state.user}-${eventTime}-${n}`, user_id: state.user,
                    pin_id: pin, action_type: ACTIONS[what], event_time: eventTime, surface: "homefeed",
                    metadata: { source: "feed-page" } };
    try {
      await call("POST", "/v1/actions", event);
      state.acted.set(pin, DONE[what]);
      const deadline = performance.now() + WAIT_MS;
      let result = await rank();
      while (!(result.sequence_newest_ms >= eventTime) && performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, POLL_MS));
        result = await rank();
      }
      performance.mark(`ranked-${n}`);
      const ms = performance.measure(`click-to-rank-${n}`, `click-${n}`, `ranked-${n}`).duration;
      const seen = result.sequence_newest_ms >= eventTime;
      window.feedTimings.push({ n, pin, action: ACTIONS[what], ms, seen, degraded: !!result.degraded });
      render(result, true);
      $("last").textContent = seen ? `${what} → re-ranked in ${ms.toFixed(0)} ms`
                                   : `${what} sent; not in the ranking after ${WAIT_MS / 1000} s`;
      $("last").dataset.ms = ms.toFixed(1);
      const all = window.feedTimings.filter((t) => t.seen).map((t) => t.ms);
      $("stats").textContent = `${all.length} actions: p50 ${percentile(all, 50).toFixed(0)} ms, ` +
                               `p95 ${percentile(all, 95).toFixed(0)} ms`;
    } catch (e) {
      showError(`${what} failed: ${e.message}`);
    } finally {
      setBusy(false);
    }
  }

  async function open(user) {
    showError("");
    state.user = user;
    state.order = [];
    state.acted = new Map();
    history.replaceState(null, "", `?user=${user}`);
    $("who").textContent = `user ${user}`;
    try {
      const cands = await call("GET", `/v1/feed/candidates?user_id=${user}`);
      state.candidates = cands.candidates.map((c) => c.pin_id);
      const result = await rank();
      render(result, false);
      performance.mark("first-render");
      $("who").textContent = `user ${user} · ${state.candidates.length} candidates · ${result.model_version}`;
    } catch (e) {
      showError(`cannot open user ${user}: ${e.message}`);
    }
  }

  $("feed").addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-act]");
    if (!button) return;
    act(Number(button.closest(".card").dataset.pin), button.dataset.act);
  });
  $("pick").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const typed = Number($("user-id").value);
    open(typed > 0 ? typed : Number($("users").value));
  });
  let newUser = null;
  $("new-user").addEventListener("click", () => { if (newUser) open(newUser++); });

  (async () => {
    try {
      const users = await call("GET", "/v1/feed/users");
      newUser = users.new_user;
      $("users").replaceChildren(...users.users.map((u) => new Option(`user ${u}`, u)));
      const asked = Number(new URLSearchParams(location.search).get("user"));
      open(asked > 0 ? asked : users.users[0] || newUser++);
    } catch (e) {
      showError(`cannot load users: ${e.message}`);
    }
  })();
})();
