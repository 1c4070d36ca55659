// The review page's decisions, keyboard-driven like Lightroom's Pick/Reject: on a job page P approves the selected
// output, X rejects it (with the reason typed in the bar), ← → or J K choose another output, Shift+P / Shift+X the
// whole job, N opens the next job awaiting approval. Decisions are POSTed with the session's CSRF token and the
// outputs' state badges are updated from the answer. On the night view: "Approve all remaining" asks first.
// Plain JavaScript, no framework; every button also works as a plain form without it.
(function () {
  "use strict";

  // "Approve all remaining" (and any form with data-confirm): confirm first
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  var decide = document.getElementById("decide");
  if (!decide) return;
  var reason = document.getElementById("reason");
  var status = document.getElementById("action-status");
  var count = document.getElementById("awaiting-count");
  var next = document.getElementById("next-awaiting");
  var choice = document.getElementById("after-choice");
  var figures = Array.prototype.slice.call(document.querySelectorAll("#sheet figure.out:not(.replaced)"));
  var selected = -1;

  function say(lines, problems) {
    if (!status) return;
    status.textContent = "";
    (lines || []).forEach(function (line) {
      var p = document.createElement("span"); p.textContent = line; status.appendChild(p);
    });
    (problems || []).forEach(function (line) {
      var p = document.createElement("span"); p.className = "problem"; p.textContent = line; status.appendChild(p);
    });
    status.hidden = !status.childNodes.length;
  }

  function decideBox(fig) { return fig && fig.querySelector(".decide"); }
  function pending(fig) {
    var box = decideBox(fig);
    var reject = box && box.querySelector("button.reject");
    return !!reject && !reject.hidden;
  }

  function select(i, scroll) {
    if (!figures.length) return;
    selected = (i + figures.length) % figures.length;
    figures.forEach(function (fig, k) { fig.classList.toggle("selected", k === selected); });
    var fig = figures[selected];
    if (scroll) fig.scrollIntoView({block: "nearest", inline: "nearest"});
    if (choice && choice.value !== fig.dataset.output) {  // compare it with the input, as a click does
      choice.value = fig.dataset.output;
      if (choice.value === fig.dataset.output) choice.dispatchEvent(new Event("change"));
    }
  }

  function nextPending(from) {
    for (var k = 1; k <= figures.length; k++) {
      var i = (from + k) % figures.length;
      if (pending(figures[i])) return i;
    }
    return -1;
  }

  function apply(outputs) {  // the job's outputs as the server says they are now; returns how many await
    if (!outputs) return null;
    var waiting = 0;
    Object.keys(outputs || {}).forEach(function (id) {
      var state = outputs[id];
      var fig = document.querySelector('#sheet figure.out[data-output="' + id + '"]');
      if (state.can_reject) waiting++;
      if (!fig) return;
      var badge = fig.querySelector(".approval");
      if (badge) { badge.textContent = state.approval; badge.className = "approval " + state.approval_key; }
      var box = decideBox(fig);
      if (!box) return;
      box.querySelector("button.approve").hidden = !state.can_approve;
      box.querySelector("button.reject").hidden = !state.can_reject;
      box.querySelector(".decided").textContent = state.decided;
    });
    if (count) count.textContent = waiting;
    ["approve-job", "reject-job"].forEach(function (id) {
      var button = document.getElementById(id);
      if (button) button.disabled = waiting === 0;
    });
    return waiting;
  }

  // every decision: POST the bar's form (CSRF, reason) with the button pressed, ask for JSON, update in place
  function send(button) {
    var data = new URLSearchParams();
    new FormData(decide).forEach(function (value, key) { data.append(key, value); });
    if (button.name) data.append(button.name, button.value);
    var url = button.getAttribute("formaction") || decide.action;
    var rejecting = /\/reject$/.test(url);
    if (rejecting && !reason.value.trim()) {
      reason.focus();
      say([], ["type why it is rejected, then press Enter (or X) to reject"]);
      return;
    }
    say(["…"], []);
    var done = false;
    fetch(url, {method: "POST", credentials: "same-origin", body: data,
                headers: {"Accept": "application/json", "X-CSRF-Token": csrfToken()}})
      .then(function (r) {
        done = r.ok;
        if (r.headers.get("content-type") && r.headers.get("content-type").indexOf("json") >= 0) return r.json();
        return r.text().then(function (t) { return {problems: [t.trim() || ("HTTP " + r.status)]}; });
      })
      .then(function (answer) {
        if (answer.error) answer.problems = [answer.error];  // the login ended: log in again
        var waiting = apply(answer.outputs);
        var lines = answer.lines || [];
        if (waiting === 0 && answer.next_awaiting !== undefined && answer.next_awaiting !== null &&
            String(answer.next_awaiting) !== decide.closest("[data-job]").dataset.job) {
          lines = lines.concat(["nothing of this job awaits a decision now: N opens the next job awaiting approval"]);
        }
        say(lines, answer.problems);
        // a reject done: the reason was for that one, so the field empties and lets go of the keys (P, X, arrows
        // work at once; another Enter there asks for a new reason instead of rejecting the next output with this one)
        if (rejecting && done) {
          reason.value = "";
          if (document.activeElement === reason) reason.blur();
        }
        if (next && answer.next_awaiting !== undefined) next.classList.toggle("muted", answer.next_awaiting === null);
        // Lightroom's auto-advance: on to the next output still awaiting a decision
        if (selected >= 0 && !pending(figures[selected])) {
          var i = nextPending(selected);
          if (i >= 0) select(i, true);
        }
      })
      .catch(function (e) { say([], ["the page could not reach assetd (" + e + "); nothing changed here"]); });
  }

  decide.addEventListener("submit", function (event) {
    event.preventDefault();
    if (event.submitter) send(event.submitter);
  });

  // Enter in the reason rejects the selected output, only that one and only while it awaits a decision (the whole
  // job is the button or Shift+X: never an Enter meant for one output); in an empty field it asks for the reason
  if (reason) reason.addEventListener("keydown", function (event) {
    if (event.key !== "Enter") return;
    event.preventDefault();
    var fig = figures[selected];
    if (fig && pending(fig)) send(decideBox(fig).querySelector("button.reject"));
    else if (fig) say([], ["the selected output is " + fig.querySelector(".approval").textContent +
                           ", nothing to reject: choose one awaiting approval (← →), or press Reject job for every one " +
                           "awaiting"]);
    else say([], ["this job has no outputs to decide about"]);
  });

  figures.forEach(function (fig, k) {
    fig.addEventListener("click", function () { select(k, false); });
  });
  if (figures.length) {
    var first = nextPending(-1);
    select(first >= 0 ? first : 0, false);
  }

  function typing(el) {
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target === reason && event.key === "Escape") { reason.blur(); return; }
    if (typing(event.target)) return;
    var key = event.key.toLowerCase();
    var fig = figures[selected];
    var box = decideBox(fig);
    var button = null;
    if (!fig && (key === "p" || key === "x")) { say(["this job has no outputs to decide about"], []); }
    else if (key === "arrowright" || key === "j") { select(selected + 1, true); }
    else if (key === "arrowleft" || key === "k") { select(selected - 1, true); }
    else if (key === "p" && event.shiftKey) { button = document.getElementById("approve-job"); }
    else if (key === "x" && event.shiftKey) { button = document.getElementById("reject-job"); }
    else if (key === "p") {
      button = box && box.querySelector("button.approve");
      if (button && button.hidden) { say(["this output is " + fig.querySelector(".approval").textContent], []); button = null; }
      else if (!button) say(["this output's channel publishes at once: nothing to approve"], []);
    }
    else if (key === "x") {
      button = box && box.querySelector("button.reject");
      if (button && button.hidden) { say(["this output is " + fig.querySelector(".approval").textContent], []); button = null; }
      else if (!button) say(["this output's channel publishes at once: nothing to reject"], []);
    }
    else if (key === "n") { if (next) window.location.href = next.href; }
    else return;
    event.preventDefault();
    if (button && button.disabled) say(["no output of this job awaits approval"], []);
    else if (button) send(button);
  });
})();
