// The console's live parts: every element with data-live="name" is refreshed from
// /console/live.json?view=..., whose fragments the server renders (and escapes).
(function () {
  "use strict";
  var view = document.body.getAttribute("data-live-view");
  if (!view) { return; }
  var url = "/console/live.json?view=" + encodeURIComponent(view) +
    (document.body.getAttribute("data-live-query") || "");
  var last = {};
  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        Object.keys(data).forEach(function (name) {
          var el = document.querySelector('[data-live="' + name + '"]');
          if (el && last[name] !== data[name]) { el.innerHTML = data[name]; last[name] = data[name]; }
        });
        document.body.setAttribute("data-live-updated", String(Date.now()));
      })
      .catch(function () { /* the next poll tries again */ })
      .then(function () { setTimeout(refresh, 2000); });
  }
  setTimeout(refresh, 2000);
})();
