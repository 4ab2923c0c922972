// Lethe operator console: plain script, no build step. Every call goes to the admin API with the admin key
// the operator typed, kept in this tab's sessionStorage. Text from the server is inserted as text, never as HTML.
"use strict";

const KEY = "lethe.adminKey";
const state = { sets: [], jobs: {}, lastRender: "", timer: null, reportId: null, urls: [] };
const $ = (id) => document.getElementById(id);

function say(message, error = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", error);
}

async function api(method, path, body, asText = false) {
  const headers = { Authorization: "Bearer " + (sessionStorage.getItem(KEY) || "") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  if (response.status === 401 || response.status === 403) {
    signOut("The admin key was refused; sign in again.");
    throw new Error("refused");
  }
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = JSON.parse(text).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return asText ? text : (text ? JSON.parse(text) : null);
}

// Sign in and out ---------------------------------------------------------------------------------

function showApp(signedIn) {
  $("sign-in").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("admin-key").value);
  $("admin-key").value = "";
  try {
    await refresh();
    showApp(true);
    say("Signed in.");
    $("sets-title").setAttribute("tabindex", "-1");
    $("sets-title").focus();
  } catch (error) {
    if (error.message !== "refused") say("Could not reach the admin API: " + error.message, true);
  }
}

function signOut(message = "Signed out.") {
  sessionStorage.removeItem(KEY);
  clearTimeout(state.timer);
  showApp(false);
  say(message, message !== "Signed out.");
  $("admin-key").focus();
}

// The forget sets table ---------------------------------------------------------------------------

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = content ?? "";
  row.append(td);
  return td;
}

function button(label, action, id, accessibleName, kind = "secondary") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = kind;
  b.dataset.action = action;
  b.dataset.id = id;
  b.setAttribute("aria-label", accessibleName);
  return b;
}

function trainingCell(set) {
  const job = state.jobs[set.job_id];
  if (!job) return document.createTextNode(set.source === "api" ? "" : `imported (${set.source})`);
  if (job.state === "queued" || job.state === "running") {
    const span = document.createElement("span");
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = job.progress;
    bar.setAttribute("aria-label", `Training progress of ${set.name}`);
    span.append(bar, ` ${Math.round(job.progress * 100)}% ${job.stage || job.state}`);
    return span;
  }
  return document.createTextNode(job.state + (job.error ? `: ${job.error}` : ""));
}

function render() {
  const snapshot = JSON.stringify([state.sets, state.jobs]);
  if (snapshot === state.lastRender) return;
  state.lastRender = snapshot;
  const focused = document.activeElement && document.activeElement.dataset
    ? [document.activeElement.dataset.action, document.activeElement.dataset.id] : null;
  const body = $("sets").querySelector("tbody");
  body.replaceChildren();
  for (const set of state.sets) {
    const row = document.createElement("tr");
    row.dataset.id = set.id;
    cell(row, set.name);
    const code = document.createElement("code");
    code.textContent = set.id;
    cell(row, code);
    cell(row, set.method);
    cell(row, set.state + (set.live ? " (live)" : ""));
    cell(row, trainingCell(set));
    cell(row, set.enabled ? "on" : "off");
    const actions = cell(row, "");
    if (set.state === "ready") {
      actions.append(button(set.enabled ? "Disable" : "Enable", "toggle", set.id,
        `${set.enabled ? "Disable" : "Enable"} ${set.name}`, "secondary"));
      actions.append(button("Report", "report", set.id, `Open the verification report of ${set.name}`, ""));
    }
    actions.append(button("Delete", "delete", set.id, `Delete ${set.name}`, "danger"));
    body.append(row);
  }
  $("sets-empty").hidden = state.sets.length > 0;
  if (focused && focused[0]) {
    const again = body.querySelector(`button[data-action="${focused[0]}"][data-id="${CSS.escape(focused[1])}"]`);
    if (again) again.focus();
  }
}

async function refresh() {
  const [sets, jobs] = await Promise.all([api("GET", "/admin/forget-sets"), api("GET", "/admin/jobs")]);
  state.sets = sets.data;
  state.jobs = Object.fromEntries(jobs.data.map((job) => [job.id, job]));
  render();
  const busy = jobs.data.some((job) => job.state === "queued" || job.state === "running");
  clearTimeout(state.timer);
  state.timer = setTimeout(() => refresh().catch((error) => say(error.message, true)), busy ? 1000 : 4000);
}

async function onTableClick(event) {
  const target = event.target.closest("button[data-action]");
  if (!target) return;
  const set = state.sets.find((s) => s.id === target.dataset.id);
  if (!set) return;
  try {
    if (target.dataset.action === "toggle") {
      await api("PATCH", `/admin/forget-sets/${encodeURIComponent(set.id)}`, { enabled: !set.enabled });
      say(`${set.name} is ${set.enabled ? "disabled" : "enabled"}.`);
    } else if (target.dataset.action === "delete") {
      if (!window.confirm(`Delete the forget set ${set.name}? This cannot be undone.`)) return;
      await api("DELETE", `/admin/forget-sets/${encodeURIComponent(set.id)}`);
      say(`${set.name} was deleted.`);
    } else if (target.dataset.action === "report") {
      await openReport(set.id);
      return;
    }
    await refresh();
  } catch (error) {
    if (error.message !== "refused") say(error.message, true);
  }
}

// Registering -------------------------------------------------------------------------------------

function parseRows(text, label) {
  const trimmed = text.trim();
  if (!trimmed) return [];
  if (trimmed.startsWith("[") || trimmed.startsWith("{")) {
    try { return JSON.parse(trimmed); } catch (_) { /* JSON Lines then */ }
  }
  return trimmed.split(/\r?\n/).filter((line) => line.trim()).map((line, index) => {
    try { return JSON.parse(line); } catch (_) { throw new Error(`${label}: line ${index + 1} is not JSON`); }
  });
}

async function readFile(input, label) {
  const file = input.files && input.files[0];
  return file ? parseRows(await file.text(), label) : null;
}

async function register(event) {
  event.preventDefault();
  const body = { name: $("reg-name").value.trim(), method: $("reg-method").value };
  try {
    const options = $("reg-options").value.trim();
    if (options) body.options = JSON.parse(options);
    if ($("src-topic").checked) {
      body.topic = $("reg-topic").value.trim();
      const seeds = $("reg-seeds").value.split(/\r?\n/).map((s) => s.trim()).filter(Boolean);
      if (seeds.length) body.seed_prompts = seeds;
    } else {
      const forget = await readFile($("reg-forget"), "forget rows");
      if (!forget) throw new Error("Choose a forget rows file.");
      if (!Array.isArray(forget)) { body.forget = forget.forget; if (forget.retain) body.retain = forget.retain; }
      else body.forget = forget;
      const retain = await readFile($("reg-retain"), "retain rows");
      if (retain) body.retain = retain;
    }
    const created = await api("POST", "/admin/forget-sets", body);
    say(`Registered ${body.name} (${created.id}); training job ${created.job_id} started.`);
    $("register-form").reset();
    toggleSource();
    await refresh();
  } catch (error) {
    if (error.message !== "refused") say("Not registered: " + error.message, true);
  }
}

function toggleSource() {
  const topic = $("src-topic").checked;
  $("topic-fields").hidden = !topic;
  $("rows-fields").hidden = topic;
}

// Trying a prompt ---------------------------------------------------------------------------------

async function tryPrompt(event) {
  event.preventDefault();
  const prompt = $("try-prompt").value;
  const result = $("try-result");
  result.textContent = "Answering…";
  try {
    const answer = await api("POST", "/admin/try", { prompt });
    const flag = document.createElement("p");
    flag.className = "flag";
    flag.id = "try-flag";
    flag.textContent = answer.flagged_by.length
      ? `Flagged by ${answer.flagged_by.join(", ")}: the answer goes through the forget set.`
      : "Not flagged: the answer is the base model's.";
    const grid = document.createElement("div");
    grid.className = "answers";
    for (const [title, text, id] of [["With the live forget sets", answer.with_forget_sets, "try-with"],
                                     ["Without them (base model)", answer.without_forget_sets, "try-without"]]) {
      const box = document.createElement("div");
      const heading = document.createElement("h3");
      heading.textContent = title;
      const body = document.createElement("p");
      body.id = id;
      body.textContent = text;
      box.append(heading, body);
      grid.append(box);
    }
    result.replaceChildren(flag, grid);
  } catch (error) {
    result.textContent = "";
    if (error.message !== "refused") say(error.message, true);
  }
}

// Reports -----------------------------------------------------------------------------------------

function download(link, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  state.urls.push(url);
  link.href = url;
}

async function openReport(id) {
  say("Loading the report…");
  const path = `/admin/forget-sets/${encodeURIComponent(id)}/report`;
  const [page, json] = await Promise.all([api("GET", path + ".html", undefined, true), api("GET", path, undefined, true)]);
  state.urls.forEach((url) => URL.revokeObjectURL(url));
  state.urls = [];
  state.reportId = id;
  $("report-frame").srcdoc = page;
  download($("report-json"), json, "application/json");
  download($("report-page"), page, "text/html");
  $("report-json").download = `${id}-report.json`;
  $("report-page").download = `${id}-report.html`;
  const set = state.sets.find((s) => s.id === id);
  $("report-title").textContent = `Verification report: ${set ? set.name : id}`;
  $("report").hidden = false;
  $("report-title").focus();
  say("Report loaded.");
}

async function rerunReport() {
  const id = state.reportId;
  if (!id) return;
  const rerun = $("report-rerun");
  rerun.disabled = true;
  say("Measuring the forget set again; this takes a while…");
  try {
    await api("POST", `/admin/forget-sets/${encodeURIComponent(id)}/report`, {});
    await openReport(id);
  } catch (error) {
    if (error.message !== "refused") say(error.message, true);
  } finally {
    rerun.disabled = false;
  }
}

function closeReport() {
  $("report").hidden = true;
  const back = document.querySelector(`button[data-action="report"][data-id="${CSS.escape(state.reportId || "")}"]`);
  state.reportId = null;
  (back || $("sets-title")).focus();
}

// Start -------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("sets").addEventListener("click", onTableClick);
  $("register-form").addEventListener("submit", register);
  $("src-rows").addEventListener("change", toggleSource);
  $("src-topic").addEventListener("change", toggleSource);
  $("try-form").addEventListener("submit", tryPrompt);
  $("report-rerun").addEventListener("click", rerunReport);
  $("report-close").addEventListener("click", closeReport);
  if (sessionStorage.getItem(KEY)) {
    refresh().then(() => showApp(true)).catch(() => showApp(false));
  } else {
    $("admin-key").focus();
  }
});
