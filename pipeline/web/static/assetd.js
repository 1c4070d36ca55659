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
// status and note of the rows on screen in place, and say how many jobs are new (reload to see them) and when
// outputs await approval that did not when the page was loaded (reload to approve them).
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
    // "output" / "outputs" beside a count that changed
    document.querySelectorAll("[data-plural]").forEach(el => {
      const n = p.totals[el.dataset.plural];
      if (n !== undefined) el.textContent = n === 1 ? el.dataset.one : el.dataset.many;
    });
    const ahead = document.getElementById("next-pill");
    if (ahead) ahead.hidden = !p.totals.next;
    approvals(p.totals);
    for (const [id, job] of Object.entries(p.jobs)) {
      const tr = table.querySelector('tr[data-id="' + id + '"]');
      const pill = tr && tr.querySelector("[data-status]");
      if (pill && pill.textContent !== job.status) {
        pill.textContent = job.status;
        pill.className = "pill " + job.status;
        tr.className = job.status;
      }
      const note = tr && tr.querySelector("[data-note]");
      if (note && job.note !== undefined && note.textContent !== job.note) {
        note.textContent = job.note;
        note.title = job.note;
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

  // Outputs awaiting approval or rejected: their pills show while there are some; when outputs await approval
  // that did not when the page was made (no "Approve all remaining" here), a note says to reload to approve them;
  // the confirmation of "Approve all remaining" says the counts of now.
  function approvals(totals) {
    const waiting = totals.awaiting_outputs || 0;
    const pills = {"awaiting-pill": waiting, "rejected-pill": totals.rejected_outputs || 0};
    for (const [id, n] of Object.entries(pills)) {
      const el = document.getElementById(id);
      if (el) el.hidden = !n;
    }
    const form = document.getElementById("approve-all");
    if (form && form.dataset.confirmTemplate) {
      const jobs = totals.awaiting || 0;
      form.dataset.confirm = form.dataset.confirmTemplate
        .replace("{outputs}", waiting + (waiting === 1 ? " output" : " outputs"))
        .replace("{jobs}", jobs + (jobs === 1 ? " job" : " jobs"));
    }
    const note = document.getElementById("approvals-fresh");
    if (note) {
      note.hidden = !waiting;
      note.querySelector("span").textContent = waiting + (waiting === 1 ? " output awaits" : " outputs await") +
        " approval since this page was loaded:";
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
