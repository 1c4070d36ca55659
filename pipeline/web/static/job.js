// The job page: the before/after slider, the chosen output, the subject check toggle, and the reason shown where
// an output's file can no longer be served (changed or gone). Plain JavaScript, no framework.
(function () {
  "use strict";
  var choice = document.getElementById("after-choice");
  var toggle = document.getElementById("check-toggle");
  var range = document.getElementById("slider-range");
  var clip = document.querySelector(".after-clip");
  var afterImg = document.getElementById("after-img");
  var beforeImg = document.getElementById("before-img");
  var alone = document.getElementById("after-alone");
  var caption = document.getElementById("after-caption");
  var figure = document.getElementById("check-figure");
  var legend = document.getElementById("check-legend");
  var purpose = document.getElementById("check-purpose");  // a step that changed the subject on purpose, per output
  var checkUrl = null;

  function slide() {
    if (clip && range) clip.style.clipPath = "inset(0 0 0 " + range.value + "%)";
  }

  function showReason(img, holder) {
    // an image that would not load: ask the server why (a 404's body says it) and show that line
    fetch(img.currentSrc || img.src).then(function (r) {
      return r.ok ? "" : r.text();
    }).then(function (text) {
      if (text && holder) { holder.textContent = text.trim(); holder.hidden = false; }
    });
  }

  function chosen() {
    var option = choice && choice.options[choice.selectedIndex];
    if (!option) return;  // no current output to compare with (the page then shows the input alone)
    var id = choice.value;
    caption.textContent = "output " + option.textContent;
    purpose.hidden = !option.dataset.purpose;
    purpose.lastElementChild.textContent = option.dataset.purpose || "";
    // the input as this output frames it (same size and place), so the slider compares like with like;
    // the input as it is when it cannot be placed
    beforeImg.onerror = function () { beforeImg.onerror = null; beforeImg.src = beforeImg.dataset.input; };
    beforeImg.src = "/files/output/" + id + "/before";
    if (toggle.checked) {
      figure.textContent = "checking the subject…";
      fetch("/files/output/" + id + "/check").then(function (r) {
        if (!r.ok) return r.text().then(function (t) { figure.textContent = t.trim(); return null; });
        // the server's line: "equal except the recorded tone match" where a step changed the subject on purpose
        figure.textContent = r.headers.get("X-Subject-Share") || "no subject found to compare";
        return r.blob();
      }).then(function (blob) {
        if (!blob) return;
        if (checkUrl) URL.revokeObjectURL(checkUrl);
        checkUrl = URL.createObjectURL(blob);
        afterImg.src = checkUrl;
        alone.src = checkUrl;
      });
      legend.hidden = false;
    } else {
      afterImg.src = "/files/output/" + id + "/preview";
      alone.src = afterImg.src;
      figure.textContent = "";
      legend.hidden = true;
    }
  }

  if (choice) {
    choice.addEventListener("change", chosen);
    toggle.addEventListener("change", chosen);
    range.addEventListener("input", slide);
    slide();
    chosen();
    alone.addEventListener("error", function () { showReason(alone, figure); });
  }

  function onBroken(img, handler) {
    // the error may have come before this script ran: a finished image with no pixels failed too
    img.addEventListener("error", handler);
    if (img.complete && img.naturalWidth === 0 && img.getAttribute("src")) handler();
  }

  var inputAlone = document.getElementById("input-alone");
  if (inputAlone) onBroken(inputAlone, function () {
    inputAlone.parentNode.hidden = true;
    showReason(inputAlone, document.getElementById("input-unavailable"));
  });

  // a click on a contact-sheet output compares it with the input; an output replaced by a later job is history:
  // its kept picture, or the placeholder saying none was kept, and nothing to compare
  document.querySelectorAll("#sheet figure.out").forEach(function (fig) {
    var img = fig.querySelector("img");
    var replaced = fig.classList.contains("replaced");
    if (img) onBroken(img, function () {
      if (replaced) {  // the cached picture went between the page and the image: the placeholder, not an icon
        img.hidden = true;
        fig.querySelector(".placeholder").hidden = false;
        return;
      }
      fig.classList.add("gone");
      showReason(img, fig.querySelector(".unavailable"));
    });
    if (replaced) return;
    fig.querySelector(".frame").addEventListener("click", function () {
      if (!choice) return;
      choice.value = fig.dataset.output;
      if (choice.value === fig.dataset.output) {
        chosen();
        document.getElementById("compare").scrollIntoView({behavior: "smooth"});
      }
    });
  });
})();
