// chalkd dashboard: live updates over SSE and a confirm before an action. No framework, no build step.
// Every value goes into the page with textContent (never innerHTML): log lines are data, not markup.
(function () {
  "use strict";
  var MAX_LINES = 5000;

  function tailLog(pre) {
    var source = new EventSource(pre.getAttribute("data-sse-log"));
    var atBottom = function () { return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40; };
    pre.scrollTop = pre.scrollHeight;
    source.onmessage = function (event) {
      var follow = atBottom();
      pre.appendChild(document.createTextNode((pre.firstChild ? "\n" : "") + event.data));
      while (pre.childNodes.length > MAX_LINES) { pre.removeChild(pre.firstChild); }
      if (follow) { pre.scrollTop = pre.scrollHeight; }
    };
    source.onerror = function () { pre.classList.add("stale"); };
    source.onopen = function () { pre.classList.remove("stale"); };
  }

  function liveCounts(el) {
    var source = new EventSource(el.getAttribute("data-sse-live"));
    source.onmessage = function (event) {
      var values = JSON.parse(event.data);
      document.querySelectorAll("[data-live]").forEach(function (node) {
        var key = node.getAttribute("data-live");
        if (Object.prototype.hasOwnProperty.call(values, key)) { node.textContent = values[key]; }
      });
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("pre[data-sse-log]").forEach(tailLog);
    document.querySelectorAll("[data-sse-live]").forEach(liveCounts);
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  });
})();
