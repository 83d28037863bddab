"""The review page: open proposals with their evidence, and approve / edit / reject.

For teams without a review tool of their own, the daemon serves one HTML page at
``GET /review`` (:func:`review_page`). The page holds no data: it asks the control API
for it, ``GET /reviews?status=open`` (scope ``read``) to list the open live proposals
and ``POST /reviews/{review_id}/verdict`` (scope ``operate``) to decide one, each call
with ``Authorization: Bearer`` and the token the person entered in the page.

Why the page itself needs no token: a browser cannot add an ``Authorization`` header
to a page it navigates to, so a protected page would need the token in its URL (kept
in history, logs and referrers) or in a cookie (sent by the browser with requests any
other site makes, which is what the bearer header avoids). The page is the same for
everyone and says nothing about the store; the token lives in the tab's
``sessionStorage`` only (gone when the tab closes, never in the URL or
``localStorage``), and the API refuses every data call without it.

Everything is inline: no script, style, font or image is fetched. The answer's
``Content-Security-Policy`` allows exactly the inline script and style by their
SHA-256, requests to the daemon itself (``connect-src 'self'``) and nothing else, and
requires Trusted Types, so the browser refuses any HTML built from strings:
every value is shown with ``textContent``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass

TOKEN_KEY = "shadow-review-token"
"""The ``sessionStorage`` key the page keeps the token under."""

LIST_LIMIT = 1000
"""How many open proposals the page asks for at once (the API's maximum)."""

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #111827; background: #fff; margin: 0 auto; max-width: 1000px; padding: 24px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.15em; margin: 0 0 8px; }
h3 { font-size: 1em; margin: 12px 0 4px; color: #374151; }
.muted { color: #6b7280; }
form, .settings { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 8px 0; }
input[type=password], input[type=text] { font: inherit; padding: 4px 8px; min-width: 18em;
       border: 1px solid #9ca3af; border-radius: 4px; }
button { font: inherit; padding: 4px 14px; border-radius: 4px; border: 1px solid #6b7280;
         background: #f9fafb; cursor: pointer; }
button:disabled { opacity: .5; cursor: progress; }
button:focus-visible, input:focus-visible, textarea:focus-visible, h2:focus-visible {
         outline: 3px solid #2563eb; outline-offset: 2px; }
button.approve { border-color: #059669; background: #ecfdf5; color: #065f46; }
button.reject { border-color: #dc2626; background: #fef2f2; color: #991b1b; }
.alert:empty, .row-alert:empty { display: none; }
.alert, .row-alert { color: #991b1b; background: #fef2f2; border-left: 6px solid #dc2626;
         padding: 6px 12px; margin: 8px 0; }
ol.reviews { list-style: none; padding: 0; }
li.review { border: 1px solid #e5e7eb; border-radius: 6px; padding: 12px 16px; margin: 12px 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
dt { color: #6b7280; } dd { margin: 0; overflow-wrap: anywhere; }
pre { background: #f3f4f6; padding: 6px 10px; border-radius: 4px; margin: 2px 0;
      white-space: pre-wrap; overflow-wrap: anywhere; }
ol.actions { padding-left: 1.4em; margin: 0; }
.buttons { display: flex; gap: 8px; margin-top: 12px; }
textarea { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; width: 100%;
           min-height: 10em; box-sizing: border-box; }
form.edit { display: block; margin-top: 8px; }
form.edit[hidden] { display: none; }
"""

_BODY = """
<header>
  <h1>Open proposals</h1>
  <p class="muted">Proposals of tier review waiting for a person, newest first. Approve
  publishes the proposed output, edit publishes yours, reject publishes nothing; the first
  verdict stands. Looking needs a token with the scope read, deciding one with operate.</p>
</header>
<form id="login">
  <label for="token">API token</label>
  <input id="token" type="password" autocomplete="off" spellcheck="false">
  <button type="submit">Use token</button>
  <button type="button" id="forget">Forget token</button>
</form>
<div class="settings">
  <label for="reviewer">Reviewer</label>
  <input id="reviewer" type="text" autocomplete="off" aria-describedby="reviewer-hint">
  <span id="reviewer-hint" class="muted">left empty: the token's name</span>
  <button type="button" id="refresh">Refresh</button>
</div>
<div id="error" class="alert" role="alert"></div>
<p id="status" role="status" aria-live="polite"></p>
<ol id="reviews" class="reviews" aria-label="Open proposals, newest first"></ol>
"""

_SCRIPT = r"""
"use strict";
const TOKEN_KEY = "%(token_key)s";
const LIST_LIMIT = %(limit)d;
const VERDICT_DONE = {approve: "Approved", edit: "Edited", reject: "Rejected"};
const $ = (id) => document.getElementById(id);
let rows = 0;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function pretty(value) { return JSON.stringify(value, null, 2); }

function say(text) { $("status").textContent = text; }

function alarm(text) { $("error").textContent = text; }

class ApiError extends Error {
  constructor(status, text) { super(text); this.status = status; }
}

function explain(status, said) {
  const words = said ? " The daemon said: " + said : "";
  if (status === 401) return "No token was sent: enter your API token above." + words;
  if (status === 403 && said && said.includes("needs the scope"))
    return "This token may not do that." + words;
  if (status === 403) return "The daemon does not accept this token." + words;
  if (status === 404) return "The daemon has no such proposal." + words;
  if (status === 409) return "Someone decided this proposal first, or it was withdrawn." + words;
  if (status === 400) return "The daemon refused the request." + words;
  return "The daemon answered " + status + "." + words;
}

async function api(method, path, body) {
  const headers = {"Authorization": "Bearer " + token()};
  const init = {method: method, headers: headers, cache: "no-store", credentials: "omit",
                redirect: "error", referrerPolicy: "no-referrer"};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (failure) {
    throw new ApiError(0, "The daemon did not answer; is it still running?");
  }
  let data = null;
  try { data = await response.json(); } catch (failure) { data = null; }
  if (!response.ok) {
    const said = data && typeof data.error === "string" ? data.error : "";
    throw new ApiError(response.status, explain(response.status, said));
  }
  return data;
}

function fact(list, name, value) {
  list.append(el("dt", name), el("dd", value));
}

function jsonBlock(value) { return el("pre", pretty(value)); }

function confidence(value) {
  return typeof value === "number" ? value.toFixed(2) : "not given";
}

function evidenceList(evidence) {
  const entries = Object.entries(evidence || {});
  if (entries.length === 0) return el("p", "none configured or found", "muted");
  const list = el("dl", null, "evidence");
  for (const [name, value] of entries) {
    list.append(el("dt", name));
    const shown = el("dd");
    if (value !== null && typeof value === "object") shown.append(jsonBlock(value));
    else shown.textContent = String(value);
    list.append(shown);
  }
  return list;
}

function actionsList(actions) {
  if (!Array.isArray(actions) || actions.length === 0) return el("p", "none", "muted");
  const list = el("ol", null, "actions");
  for (const action of actions) {
    const item = el("li", null, "action");
    const head = el("p");
    head.append(el("strong", action.tool, "tool"),
                el("span", " · confidence " + confidence(action.confidence), "muted"));
    item.append(head, jsonBlock(action.arguments === undefined ? {} : action.arguments));
    list.append(item);
  }
  return list;
}

function row(review) {
  const p = review.proposal || {};
  const id = "r" + (rows++);
  const item = el("li", null, "review");
  item.dataset.reviewId = review.review_id;
  const article = el("article");
  article.setAttribute("aria-labelledby", id + "-title");
  const title = el("h2", review.key + " (event " + review.event_id + ")");
  title.id = id + "-title";
  title.tabIndex = -1;
  const facts = el("dl", null, "facts");
  fact(facts, "Review", review.review_id);
  fact(facts, "Event", review.event_id);
  fact(facts, "Key", review.key);
  fact(facts, "Candidate", review.candidate + (review.version ? " version " + review.version : ""));
  fact(facts, "Step", String(review.step) + (typeof p.percent === "number"
                                              ? " (" + p.percent + " %% live)" : ""));
  fact(facts, "Rule", (p.tier || "review") + " by " + (p.rule || "?"));
  fact(facts, "Proposed", review.proposed_at);
  fact(facts, "Confidence", confidence(p.confidence));
  article.append(title, facts,
                 el("h3", "Evidence"), evidenceList(p.evidence),
                 el("h3", "Proposed actions"), actionsList(p.actions),
                 el("h3", "Output"), jsonBlock(p.output));
  const problem = el("p", "", "row-alert");
  problem.setAttribute("role", "alert");
  const buttons = el("div", null, "buttons");
  const approve = el("button", "Approve", "approve");
  const edit = el("button", "Edit", "edit");
  const reject = el("button", "Reject", "reject");
  for (const button of [approve, edit, reject]) {
    button.type = "button";
    button.setAttribute("aria-describedby", title.id);
  }
  buttons.append(approve, edit, reject);
  const form = editForm(id, p.output);
  article.append(buttons, form.form, problem);
  item.append(article);
  const send = (verdict, output) => decide(item, review, verdict, output, problem);
  approve.addEventListener("click", () => send("approve"));
  reject.addEventListener("click", () => send("reject"));
  edit.addEventListener("click", () => {
    form.form.hidden = false;
    edit.setAttribute("aria-expanded", "true");
    form.area.focus();
  });
  edit.setAttribute("aria-expanded", "false");
  edit.setAttribute("aria-controls", form.form.id);
  form.cancel.addEventListener("click", () => {
    form.form.hidden = true;
    form.problem.textContent = "";
    edit.setAttribute("aria-expanded", "false");
    edit.focus();
  });
  form.form.addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    let output;
    try {
      output = JSON.parse(form.area.value);
    } catch (failure) {
      return refuse(form, "Not sent: the output is not JSON (" + failure.message + ").");
    }
    if (output === null) return refuse(form, "Not sent: an edit needs an output, not null.");
    form.area.removeAttribute("aria-invalid");
    form.problem.textContent = "";
    send("edit", output);
  });
  return item;
}

function refuse(form, text) {
  form.area.setAttribute("aria-invalid", "true");
  form.problem.textContent = text;
  form.area.focus();
}

function editForm(id, output) {
  const form = el("form", null, "edit");
  form.id = id + "-edit";
  form.hidden = true;
  const label = el("label", "Edited output (JSON)");
  const area = el("textarea");
  area.id = id + "-output";
  area.spellcheck = false;
  area.value = pretty(output === undefined ? null : output);
  label.htmlFor = area.id;
  const problem = el("p", "", "row-alert");
  problem.id = id + "-invalid";
  problem.setAttribute("role", "alert");
  area.setAttribute("aria-describedby", problem.id);
  const buttons = el("div", null, "buttons");
  const submit = el("button", "Send edit", "approve");
  submit.type = "submit";
  const cancel = el("button", "Cancel");
  cancel.type = "button";
  buttons.append(submit, cancel);
  form.append(label, area, problem, buttons);
  return {form: form, area: area, problem: problem, cancel: cancel};
}

async function decide(item, review, verdict, output, problem) {
  const body = {verdict: verdict};
  if (verdict === "edit") body.output = output;
  const reviewer = $("reviewer").value.trim();
  if (reviewer) body.reviewer = reviewer;
  const buttons = item.querySelectorAll("button");
  buttons.forEach((button) => { button.disabled = true; });
  problem.textContent = "";
  try {
    const found = await api("POST", "/reviews/" + encodeURIComponent(review.review_id) +
                            "/verdict", body);
    leave(item);
    say(VERDICT_DONE[found.verdict] + " " + review.key + " as " + found.reviewer + ". " +
        remaining());
  } catch (failure) {
    buttons.forEach((button) => { button.disabled = false; });
    if (failure.status === 404 || failure.status === 409) {
      leave(item);
      alarm(review.key + " left the list: " + failure.message);
      say(remaining());
    } else {
      problem.textContent = failure.message;
    }
  }
}

function leave(item) {
  const next = item.nextElementSibling || item.previousElementSibling;
  item.remove();
  const heading = next ? next.querySelector("h2") : null;
  if (heading) heading.focus(); else $("refresh").focus();
}

function remaining() {
  const n = $("reviews").children.length;
  if (n === 0) return "No open proposals left.";
  return n + (n === 1 ? " open proposal." : " open proposals.");
}

function micros(iso) {
  // ISO 8601 with microseconds: Date keeps milliseconds, the rest is added back.
  const fraction = /\.(\d+)/.exec(iso);
  const digits = fraction ? (fraction[1] + "000000").slice(0, 6) : "000000";
  return Date.parse(iso.replace(/\.\d+/, "")) * 1000 + Number(digits);
}

function newestFirst(a, b) {
  const at = micros(b.proposed_at) - micros(a.proposed_at);
  return at !== 0 ? at : (a.review_id < b.review_id ? 1 : -1);
}

async function load() {
  const list = $("reviews");
  alarm("");
  if (!token()) {
    list.replaceChildren();
    say("Enter an API token to see the open proposals.");
    return;
  }
  say("Loading…");
  try {
    const found = await api("GET", "/reviews?status=open&limit=" + LIST_LIMIT);
    const reviews = found.reviews.slice().sort(newestFirst);
    list.replaceChildren(...reviews.map(row));
    let text = reviews.length === 0 ? "No open proposals."
      : reviews.length + (reviews.length === 1 ? " open proposal" : " open proposals") +
        ", newest first.";
    if (reviews.length >= LIST_LIMIT)
      text += " The daemon lists the oldest " + LIST_LIMIT + "; decide some to see more.";
    say(text);
  } catch (failure) {
    list.replaceChildren();
    say("");
    if (failure.status === 401 || (failure.status === 403 &&
                                   !failure.message.includes("needs the scope"))) {
      sessionStorage.removeItem(TOKEN_KEY);
    }
    alarm(failure.message);
  }
}

$("login").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  const entered = $("token").value.trim();
  $("token").value = "";
  if (!entered) {
    alarm("Enter a token first.");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, entered);
  load();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  load();
});
$("refresh").addEventListener("click", load);
load();
"""


@dataclass(frozen=True, slots=True)
class ReviewPage:
    """The page's bytes and the headers it must be served with."""

    body: bytes
    headers: dict[str, str]


def _source_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@functools.cache
def review_page() -> ReviewPage:
    """The review page, with a Content-Security-Policy that allows its own inline script and
    style (by hash) and requests to the daemon, and nothing else."""
    script = _SCRIPT % {"token_key": TOKEN_KEY, "limit": LIST_LIMIT}
    html = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"referrer\" content=\"no-referrer\">\n"
            "<title>Open proposals · shadow</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>{_BODY}<script>{script}</script>\n"
            "</body>\n</html>\n")
    policy = "; ".join([
        "default-src 'none'",
        f"script-src {_source_hash(script)}",
        f"style-src {_source_hash(_CSS)}",
        "connect-src 'self'",
        "img-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ])
    headers = {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    return ReviewPage(body=html.encode("utf-8"), headers=headers)
