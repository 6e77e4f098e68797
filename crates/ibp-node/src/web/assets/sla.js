// The SLA page: the JSON of /v1/sla?month=YYYY-MM as a table.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  function td(text, cls) { const e = document.createElement("td"); e.textContent = text; if (cls) e.className = cls; return e; }
  function pct(f) { return f.availability.toFixed(3) + " %"; }

  async function load(month) {
    const url = "/v1/sla" + (month ? "?month=" + encodeURIComponent(month) : "");
    $("json-link").href = url;
    const r = await fetch(url, { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) { $("sla-error").textContent = body.error || ("HTTP " + r.status); $("sla-error").hidden = false; return; }
    $("sla-error").hidden = true;
    $("month").value = body.month;
    const rows = [];
    let below = 0;
    for (const m of body.members) {
      if (m.belowTarget) below++;
      for (const s of m.services) {
        const tr = document.createElement("tr");
        tr.dataset.member = m.member; tr.dataset.service = s.service;
        if (s.belowTarget) tr.className = "below";
        tr.append(td(m.member), td(s.service), td(s.downtimeHours.toFixed(2), "downtime"),
          td(pct(s) + (s.belowTarget ? " ▼" : ""), "availability"), td(pct(s.ipv4)), td(pct(s.ipv6)),
          td(String(s.outages.length)));
        rows.push(tr);
      }
      if (m.services.length === 0) {
        const tr = document.createElement("tr");
        tr.dataset.member = m.member;
        tr.append(td(m.member), td("(no service assigned)", "muted"), td(""), td(""), td(""), td(""), td(""));
        rows.push(tr);
      }
    }
    $("sla").tBodies[0].replaceChildren(...rows);
    $("sla-summary").textContent = body.month + ": " + body.hours + " hours, target " + body.target + " %; "
      + below + " of " + body.members.length + " members below target.";
    document.body.dataset.rendered = body.month;
  }

  $("month-form").addEventListener("submit", (e) => { e.preventDefault(); load($("month").value); });
  const q = new URLSearchParams(location.search).get("month");
  load(q || "");
})();
