"use strict";
// The episode viewer: filters and sorts the index, renders the list a chunk at a time as it scrolls into view,
// and parses an episode's detail line only when it is opened (so thousands of episodes open at once).
const meta = JSON.parse(document.getElementById("meta").textContent);
const $ = (id) => document.getElementById(id);
const CHUNK = 200;
const state = { index: [], lines: [], lower: [], shown: [], rendered: 0, open: -1,
                solved: "all", error: "all", pair: "all", stops: new Set() };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else if (key === "onclick") node.onclick = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const num = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const yesNo = (v) => el("span", { class: v ? "yes" : "no" }, v ? "yes" : "no");

// ---- list: columns per kind of source ----
const COLUMNS = {
  run: [["step", (e) => e.step], ["seed", (e) => e.seed], ["reward", (e) => num(e.reward)],
        ["solved", (e) => yesNo(e.solved)], ["turns", (e) => e.turns], ["stop", (e) => e.stop],
        ["env error", (e) => (e.error ? el("span", { class: "no" }, "error") : "")],
        ["tokens", (e) => (e.tokens ? "✓" : "")]],
  eval: [["seed", (e) => e.seed], ["sample", (e) => e.sample], ["return", (e) => num(e.reward)],
         ["solved", (e) => yesNo(e.solved)], ["turns", (e) => e.turns],
         ...(meta.played ? [["stop", (e) => e.stop], ["turn by turn", (e) => (e.played ? "✓" : "")]] : [])],
  compare: [["seed", (e) => e.seed], ["sample", (e) => e.sample], [`return ${(meta.labels || [])[0]}`,
            (e) => num(e.reward_a)], [`return ${(meta.labels || [])[1]}`, (e) => num(e.reward)],
            ["who solved", (e) => e.pair], ...(meta.played ? [["turn by turn", (e) => (e.played ? "✓" : "")]] : [])],
};
const columns = COLUMNS[meta.kind] || COLUMNS.run;

function readFilters() {
  const value = (id) => ($(id).value === "" ? null : Number($(id).value));
  const query = $("search").value.trim().toLowerCase();
  return { stepMin: value("step-min"), stepMax: value("step-max"), rewardMin: value("reward-min"),
           rewardMax: value("reward-max"), query, queryJson: JSON.stringify(query).slice(1, -1).replace(/</g, "\\u003c") };
}

function matches(e, i, f) {
  if (f.stepMin !== null && !(e.step >= f.stepMin)) return false;
  if (f.stepMax !== null && !(e.step <= f.stepMax)) return false;
  if (f.rewardMin !== null && !(e.reward >= f.rewardMin)) return false;
  if (f.rewardMax !== null && !(e.reward <= f.rewardMax)) return false;
  if (state.solved !== "all" && e.solved !== (state.solved === "solved")) return false;
  if (state.error !== "all" && e.error !== (state.error === "env error")) return false;
  if (state.pair !== "all" && e.pair !== state.pair) return false;
  if (state.stops.size && !state.stops.has(e.stop)) return false;
  if (f.query) {
    const text = (state.lower[i] ??= state.lines[i].toLowerCase());
    if (!text.includes(f.query) && !text.includes(f.queryJson)) return false;
  }
  return true;
}

function sortKey(e, key) {
  const v = e[key];
  return v === null || v === undefined ? -Infinity : v;
}

function apply() {
  const f = readFilters();
  const order = $("sort").value;
  const key = order.replace("-", ""), sign = order.startsWith("-") ? -1 : 1;
  state.shown = state.index.map((e, i) => i).filter((i) => matches(state.index[i], i, f));
  state.shown.sort((a, b) => sign * (sortKey(state.index[a], key) - sortKey(state.index[b], key)) || a - b);
  $("count").textContent = `${state.shown.length} of ${state.index.length} episodes`;
  $("list").tBodies[0].replaceChildren();
  state.rendered = 0;
  renderMore();
}

function renderMore() {
  const body = $("list").tBodies[0];
  const rows = state.shown.slice(state.rendered, state.rendered + CHUNK).map((i) => {
    const e = state.index[i];
    return el("tr", { class: "episode" + (i === state.open ? " open" : ""), "data-i": i, onclick: () => openEpisode(i) },
              columns.map(([, cell]) => el("td", {}, cell(e))));
  });
  body.append(...rows);
  state.rendered += rows.length;
  $("more").textContent = state.rendered < state.shown.length ? `showing ${state.rendered}; scroll for more` : "";
}

new IntersectionObserver((seen) => { if (seen.some((s) => s.isIntersecting)) renderMore(); })
  .observe($("more"));

// ---- chips: one-click filters ----
function chipGroup(id, label, values, current, pick) {
  const group = $(id);
  group.replaceChildren();
  if (values.length < 2) return;
  group.append(`${label}: `);
  for (const [value, text] of values) {
    const on = typeof current === "function" ? current(value) : current === value;
    group.append(el("button", { class: on ? "on" : "", "data-value": value, onclick: () => { pick(value); chips(); apply(); } }, text));
  }
}

function counted(key) {
  const counts = new Map();
  for (const e of state.index) if (e[key]) counts.set(e[key], (counts.get(e[key]) || 0) + 1);
  return [...counts].sort().map(([value, n]) => [value, `${value} (${n})`]);
}

function chips() {
  const some = (test) => state.index.filter(test).length;
  chipGroup("solved-chips", "solved", [["all", "all"], ["solved", `solved (${some((e) => e.solved)})`],
            ["unsolved", `unsolved (${some((e) => !e.solved)})`]], state.solved, (v) => { state.solved = v; });
  if (meta.kind === "run" || (meta.kind === "eval" && meta.played)) {  // an outcome alone has no stop reason
    chipGroup("error-chips", "env error", [["all", "all"], ["env error", `error (${some((e) => e.error)})`],
              ["none", `none (${some((e) => !e.error)})`]], state.error, (v) => { state.error = v; });
    chipGroup("stop-chips", "stop", counted("stop"), (v) => state.stops.has(v),
              (v) => { if (!state.stops.delete(v)) state.stops.add(v); });
  }
  if (meta.kind === "compare") {
    chipGroup("pair-chips", "who solved", [["all", "all"], ...counted("pair")], state.pair, (v) => { state.pair = v; });
  }
}

function addEpisodes(index, lines) {
  state.index.push(...index);
  state.lines.push(...lines);
  chips();
  apply();
}

// ---- one episode ----
function facts(object) {
  return el("table", { class: "facts" }, Object.entries(object || {}).map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)))));
}

function message(m) {
  const who = m.name ? `${m.role} · ${m.name}` : m.role;
  return el("div", {}, el("div", { class: "hint" }, who), el("pre", {}, m.content || ""),
            (m.images || []).map((src) => el("img", { src, alt: "observation image" })));
}

function turn(t, k) {
  const calls = t.calls.map((c) => el("div", { class: "call" }, `→ ${c.name}(${JSON.stringify(c.arguments)})`));
  const errors = t.errors.map((e) => el("div", { class: "parse-error" }, `parse error: ${e}`));
  const none = calls.length || errors.length ? null : el("div", { class: "hint" }, "no tool call: plain text to the env");
  return el("div", { class: "turn" }, el("h3", {}, `turn ${k + 1}`),
            el("div", { class: "model" }, el("div", { class: "hint" }, "model"), el("pre", {}, t.text), calls, errors, none),
            el("div", { class: "reply" }, t.reply.map(message)));
}

function tokenView(tokens) {
  const spans = tokens.spans;
  const scale = Math.max(1e-9, ...spans.filter((s) => s[3]).map((s) => Math.abs(s[4])));
  const box = el("div", { class: "tokens" });
  const frag = document.createDocumentFragment();
  for (const [start, end, envMask, trained, adv] of spans) {
    const kind = !envMask ? "masked" : trained ? "trained" : "untrained";
    const alpha = 0.12 + 0.6 * Math.abs(adv) / scale;
    const colour = adv >= 0 ? `rgba(22, 163, 74, ${alpha})` : `rgba(220, 38, 38, ${alpha})`;
    for (let k = start; k < end; k++) {
      const tok = el("span", { class: `tok ${kind}`, "data-mask": envMask, "data-trained": trained,
                               title: `token ${k} · ${kind} · advantage ${adv}` }, tokens.pieces[k]);
      if (kind === "trained") tok.style.background = colour;
      frag.append(tok);
    }
  }
  box.append(frag);
  const legend = el("div", { class: "legend" }, el("span", { class: "tok trained", style: "background: rgba(22,163,74,.5)" }, "trained, advantage > 0"),
                    el("span", { class: "tok trained", style: "background: rgba(220,38,38,.5)" }, "trained, advantage < 0"),
                    el("span", { class: "tok masked" }, "env / template (env_mask 0)"),
                    el("span", { class: "tok untrained" }, "model, not trained (truncated)"));
  return [legend, box];
}

// what every written episode holds, trained or evaluated (rl/episode_log.py played_row)
function outcome(info) {
  const head = { solved: info.solved ? "yes" : "no", "stop reason": info.stop_reason, "env error": info.env_error || "none" };
  if (info.generation_error) head["generation error"] = info.generation_error;
  return head;
}

function playedParts(ep) {
  const parts = [el("details", {}, el("summary", {}, "episode facts"), facts(ep.info))];
  if (ep.prompt) parts.push(el("details", {}, el("summary", {}, "starting messages"), ep.prompt.map(message)));
  return parts;
}

function runEpisode(ep) {
  const head = { reward: num(ep.reward), advantage: num(ep.advantage), ...outcome(ep.info || {}),
                 rewards: Object.entries(ep.rewards || {}).map(([k, v]) => `${k} ${num(v)}`).join(" · ") };
  const parts = [el("h2", {}, `step ${ep.step} · seed ${ep.seed}`), facts(head), ...playedParts(ep)];
  parts.push(el("h3", {}, "tokens"));
  parts.push(...(ep.tokens ? tokenView(ep.tokens)
    : [el("p", { class: "hint" }, "No token view for this episode: the first log.token_episodes episodes of a step log one.")]));
  parts.push(...(ep.turns ? ep.turns.map(turn) : [el("pre", {}, ep.text)]));
  return parts;
}

// an eval episode turn by turn (eval.py's episodes file), or its outcome alone: a result written without
// episodes (eval.transcripts=0, or an older eval.py), or one past the first eval.transcripts
function evalEpisode(ep) {
  if (!Array.isArray(ep.turns)) {
    return [facts(ep), el("p", { class: "hint" }, "Outcome only: no turns were written for this episode.")];
  }
  const info = ep.info || {};
  return [facts({ return: num(info.episode_return), ...outcome(info) }), ...playedParts(ep), ...ep.turns.map(turn)];
}

function openEpisode(i) {
  state.open = i;
  document.querySelectorAll("tr.episode.open").forEach((r) => r.classList.remove("open"));
  document.querySelector(`tr.episode[data-i="${i}"]`)?.classList.add("open");
  const ep = JSON.parse(state.lines[i]);
  let parts;
  if (meta.kind === "run") parts = runEpisode(ep);
  else if (meta.kind === "compare") parts = [el("h2", {}, `seed ${ep.a.seed} · sample ${ep.a.sample}`),
    el("div", { class: "pair" }, [ep.a, ep.b].map((side, k) => el("div", {}, el("h3", {}, meta.labels[k]), evalEpisode(side))))];
  else parts = [el("h2", {}, `seed ${ep.seed} · sample ${ep.sample}`), ...evalEpisode(ep)];
  $("detail").replaceChildren(...parts);
}

// ---- start: embedded data, or a live run's server ----
function start() {
  $("title").textContent = meta.title;
  const about = [meta.kind, meta.env, meta.model].filter(Boolean).join(" · ");
  $("about").textContent = about + (meta.step_advantage_weight ? ` · step-level credit ${meta.step_advantage_weight}` : "")
    + (meta.played ? ` · ${meta.played} episodes turn by turn` : "") + (meta.note ? ` · ${meta.note}` : "");
  $("list").tHead.replaceChildren(el("tr", {}, columns.map(([name]) => el("th", {}, name))));
  for (const id of ["step-min", "step-max", "reward-min", "reward-max", "sort"]) $(id).addEventListener("input", apply);
  let typing;
  $("search").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(apply, 150); });
  if (!meta.live) {
    const text = $("episodes").textContent;
    addEpisodes(JSON.parse($("index").textContent), text ? text.split("\n") : []);
    return;
  }
  const poll = async () => {
    try {
      const version = state.version ?? "";
      const reply = await (await fetch(`episodes?after=${state.lines.length}&version=${version}`, { cache: "no-store" })).json();
      state.version = reply.version;
      if (reply.reset) { state.index = []; state.lines = []; state.lower = []; state.open = -1; }
      if (reply.reset || reply.lines.length) addEpisodes(reply.index, reply.lines);
      $("live").textContent = `live · ${reply.total} episodes · checked ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      $("live").textContent = `live · server not answering (${err})`;
    }
    setTimeout(poll, 2000);
  };
  poll();
}

start();
