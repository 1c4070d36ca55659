// assetd review page: shared helpers (no framework, no build step).
"use strict";

// The session's CSRF token (base.html's meta tag): send it as X-CSRF-Token with every fetch POST.
function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function postJSON(url, body) {
  return fetch(url, {method: "POST", credentials: "same-origin",
                     headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken()},
                     body: JSON.stringify(body || {})});
}

// The night view: poll /api/progress every 2 s while the page is visible; update the counts and the
// status of the rows on screen in place, and say how many jobs are new (reload to see them).
(function nightProgress() {
  const table = document.getElementById("jobs");
  if (!table || !table.dataset.progress) return;
  const shownNewest = Number(table.dataset.newest || 0);
  const ids = Array.from(table.querySelectorAll("tr[data-id]")).map(tr => tr.dataset.id);
  const url = table.dataset.progress + (ids.length ? "&ids=" + ids.join(",") : "");
  const fresh = document.getElementById("fresh");

  function setText(el, value) {
    if (el && el.textContent !== String(value)) {
      el.textContent = value;
      const cell = el.closest("td");
      if (cell) cell.classList.toggle("zero", !value);
    }
  }

  function apply(p) {
    for (const [key, value] of Object.entries(p.totals)) {
      document.querySelectorAll('[data-total="' + key + '"]').forEach(el => setText(el, value));
    }
    for (const g of p.groups) {
      const row = document.querySelector('tr[data-group="' + CSS.escape((g.inbox || "") + "|" + g.rule) + '"]');
      if (!row) continue;
      row.querySelectorAll("[data-key]").forEach(el => setText(el, g[el.dataset.key]));
    }
    for (const [id, job] of Object.entries(p.jobs)) {
      const tr = table.querySelector('tr[data-id="' + id + '"]');
      const pill = tr && tr.querySelector("[data-status]");
      if (pill && pill.textContent !== job.status) {
        pill.textContent = job.status;
        pill.className = "pill " + job.status;
        tr.className = job.status;
      }
    }
    setText(document.getElementById("matching"), p.matching);
    const added = p.newest - shownNewest;
    if (fresh && added > 0) {
      fresh.querySelector("span").textContent = added + (added === 1 ? " new job" : " new jobs") + " since this page was loaded.";
      fresh.hidden = false;
      if (table.classList.contains("empty")) table.hidden = true;  // "No jobs" is no longer true: the note says so
    }
  }

  async function poll() {
    if (!document.hidden) {
      try {
        const r = await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}});
        if (r.ok) apply(await r.json());
      } catch (e) { /* the server restarting: try again next time */ }
    }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 2000);
})();
