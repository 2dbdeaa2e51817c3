// secagg's pages: a few enhancements over server-rendered HTML (no framework, no build, no CDN).
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  if (response.status !== 204) {
    data = await response.json().catch(() => null);
  }
  if (!response.ok) {
    const detail = data && data.detail ? data.detail : response.statusText;
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return data;
}

function say(text, bad) {
  const status = document.getElementById("action-status");
  if (status) {
    status.textContent = text;
    status.classList.toggle("bad", Boolean(bad));
  }
}

// events: select, mark reviewed, live updates ------------------------------------------------

function picked() {
  return [...document.querySelectorAll("input.pick:checked")].map((box) => Number(box.value));
}

function refreshButtons() {
  const mark = document.getElementById("mark-reviewed");
  if (mark) mark.disabled = picked().length === 0;
}

async function markReviewed() {
  const ids = picked();
  if (!ids.length) return;
  say("saving…");
  try {
    const result = await api("POST", "/api/events/review", { event_ids: ids, reviewed: true });
    for (const id of result.event_ids) {
      const card = document.querySelector(`article.card[data-event-id="${id}"]`);
      if (!card) continue;
      card.classList.add("reviewed");
      const line = card.querySelector(".reviewline");
      if (line) line.textContent = `reviewed by ${result.reviewed_by} just now`;
      const box = card.querySelector("input.pick");
      if (box) box.checked = false;
    }
    say(`${result.event_ids.length} event(s) marked reviewed`);
  } catch (error) {
    say(`not saved: ${error.message}`, true);
  }
  refreshButtons();
}

function startLive() {
  const live = document.getElementById("live");
  const list = document.getElementById("events");
  if (!live || !list || live.dataset.latestId === undefined) return;
  let latest = Number(live.dataset.latestId);
  const query = live.dataset.query;
  const every = 1000 * Number(live.dataset.pollS || 3);
  const poll = async () => {
    try {
      const url = `/events/rows?after_id=${latest}${query ? "&" + query : ""}`;
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (response.redirected || response.status === 401) {
        live.textContent = "logged out: reload the page to log in again";
        return;
      }
      if (response.ok) {
        latest = Number(response.headers.get("X-Latest-Id") || latest);
        const html = (await response.text()).trim();
        if (html) {
          const holder = document.createElement("div");
          holder.innerHTML = html;
          const cards = [...holder.querySelectorAll("article.card")];
          for (const card of cards.reverse()) {
            card.classList.add("new");
            list.prepend(card);
          }
          document.querySelector(".empty")?.remove();
        }
        live.classList.remove("stale");
      } else {
        live.classList.add("stale");
      }
    } catch (error) {
      live.classList.add("stale");
    }
    setTimeout(poll, every);
  };
  setTimeout(poll, every);
}

// one event: review, reproduce ---------------------------------------------------------------

async function reviewOne(button) {
  const reviewed = button.dataset.reviewed === "true";
  say("saving…");
  try {
    const result = await api("POST", "/api/events/review", {
      event_ids: [Number(button.dataset.eventId)],
      reviewed,
    });
    document.getElementById("review-state").textContent = reviewed
      ? `by ${result.reviewed_by} just now`
      : "no";
    button.dataset.reviewed = reviewed ? "false" : "true";
    button.textContent = reviewed ? "Mark not reviewed" : "Mark reviewed";
    say(reviewed ? "marked reviewed" : "marked not reviewed");
  } catch (error) {
    say(`not saved: ${error.message}`, true);
  }
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
}

async function reproduce(button) {
  const verdict = document.getElementById("verdict");
  button.disabled = true;
  say("running the recorded model and rules again…");
  try {
    const report = await api("POST", `/api/events/${button.dataset.eventId}/reproduce`);
    verdict.hidden = false;
    verdict.replaceChildren();
    const head = document.createElement("p");
    head.className = report.ok ? "ok" : "bad";
    const deleted = report.frames.filter((f) => f.status === "deleted").length;
    const rerun = report.frames.length - deleted;
    head.textContent = (report.ok
      ? `Reproduced: all ${rerun} frame(s) re-run match.`
      : `Not reproduced: ${report.frames.filter((f) => f.status !== "match" && f.status !== "deleted").length} of ${rerun} frame(s) differ or are missing.`)
      + (deleted ? ` ${deleted} frame(s) not re-run: snapshot deleted by policy or retention.` : "");
    verdict.append(head);
    const table = document.createElement("table");
    table.className = "grid";
    const header = table.createTHead().insertRow();
    for (const name of ["frame", "verdict", "how", "input", "detections", "IoU min", "score Δ max"]) {
      const th = document.createElement("th");
      th.textContent = name;
      header.append(th);
    }
    const body = table.createTBody();
    for (const f of report.frames) {
      const row = body.insertRow();
      cell(row, f.frame_id.slice(0, 12));
      cell(row, f.status);
      cell(row, f.mode);
      cell(row, f.input.replace(/\/[^ ]*\//g, ""));
      cell(row, `${f.matched}/${f.recorded} (re-run ${f.rerun})`);
      cell(row, f.iou_min === null ? "" : f.iou_min.toFixed(4));
      cell(row, f.score_delta_max === null ? "" : f.score_delta_max.toFixed(4));
    }
    verdict.append(table);
    for (const note of report.notes) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = note;
      verdict.append(p);
    }
    say("");
  } catch (error) {
    say(`reproduce failed: ${error.message}`, true);
  }
  button.disabled = false;
}

// plots ----------------------------------------------------------------------------------------

async function drawPlot(form) {
  const data = new FormData(form);
  const query = { kind: data.get("kind") };
  for (const name of ["camera", "since", "until"]) {
    if (data.get(name)) query[name] = data.get(name);
  }
  say("drawing…");
  try {
    const plot = await api("POST", "/api/plots", query);
    const figure = document.getElementById("plot");
    figure.hidden = false;
    figure.querySelector("img").src = plot.png_url;
    figure.querySelector("figcaption").textContent =
      `${plot.artifact_id} · ${plot.event_ids.length} event(s) · code ${plot.code_version}`;
    say("");
  } catch (error) {
    say(`no plot: ${error.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("change", (event) => {
    if (event.target.matches("input.pick")) refreshButtons();
  });
  document.getElementById("mark-reviewed")?.addEventListener("click", markReviewed);
  document.getElementById("select-all")?.addEventListener("click", () => {
    const boxes = [...document.querySelectorAll("input.pick")];
    const all = boxes.every((box) => box.checked);
    for (const box of boxes) box.checked = !all;
    refreshButtons();
  });
  const one = document.getElementById("review-one");
  one?.addEventListener("click", () => reviewOne(one));
  const again = document.getElementById("reproduce");
  again?.addEventListener("click", () => reproduce(again));
  const plotForm = document.getElementById("plot-form");
  plotForm?.addEventListener("submit", (event) => {
    event.preventDefault();
    drawPlot(plotForm);
  });
  startLive();
});
