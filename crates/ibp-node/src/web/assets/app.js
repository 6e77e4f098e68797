// The status page: one view model (/v1/page), redrawn on every live event (/v1/stream).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let model = null;
  let refreshing = false;
  let again = false;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  function ago(t) {
    if (!t) return "";
    const s = Math.max(0, (Date.now() - Date.parse(t)) / 1000);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
    return (s / 86400).toFixed(1) + " d ago";
  }
  function hours(h) { return h < 1 ? Math.round(h * 60) + " min" : h.toFixed(2) + " h"; }
  function when(t) { return t ? new Date(t).toISOString().replace("T", " ").slice(0, 19) + "Z" : ""; }
  function status(v) {
    if (v === true) return el("span", { class: "st up", text: "online" });
    if (v === false) return el("span", { class: "st down", text: "offline" });
    return el("span", { class: "st none", text: "—" });
  }
  function target(r) { return r.endpoint || r.domainName || "(site)"; }
  function family(v6) { return v6 ? "IPv6" : "IPv4"; }

  function renderBoard() {
    const m = $("f-member").value.trim().toLowerCase();
    const sv = $("f-service").value;
    const st = $("f-status").value;
    const body = $("board").tBodies[0];
    const rows = (model.board || []).filter((r) => {
      if (m && !r.memberName.toLowerCase().includes(m)) return false;
      if (sv && r.service !== sv) return false;
      if (st === "offline" && r.official !== false) return false;
      if (st === "online" && r.official !== true) return false;
      if (st === "disagree" && !(r.local !== null && r.official !== null && r.local !== r.official)) return false;
      return true;
    });
    rows.sort((a, b) => (a.official === false ? 0 : 1) - (b.official === false ? 0 : 1)
      || a.memberName.localeCompare(b.memberName) || target(a).localeCompare(target(b)));
    body.replaceChildren(...rows.map((r) => {
      const disagree = r.local !== null && r.local !== undefined && r.official !== null && r.local !== r.official;
      const tr = el("tr", { class: [r.official === false ? "offline" : "", disagree ? "disagree" : ""].join(" ").trim() || null,
        "data-member": r.memberName, "data-status": r.official === false ? "offline" : r.official === true ? "online" : "none" },
        el("td", {}, r.memberName),
        el("td", {}, r.checkType + "/" + r.checkName),
        el("td", {}, target(r), r.service ? el("div", { class: "muted", text: r.service }) : ""),
        el("td", {}, family(r.isIPv6)),
        el("td", {}, status(r.official)),
        el("td", { class: "mon" }, status(r.local)),
        el("td", { title: when(r.since) }, ago(r.since)),
        el("td", { class: "err" }, r.errorText || ""));
      return tr;
    }));
    $("board-empty").hidden = rows.length > 0;
  }

  function showDetail(d) {
    $("detail-title").textContent = (d.passed ? "Passed: " : "Failed: ") + d.memberName + " " + target(d)
      + " → " + (d.proposedStatus ? "online" : "offline");
    const votes = Object.entries(d.votes || {});
    $("detail-votes").tBodies[0].replaceChildren(...votes.map(([k, v]) =>
      el("tr", {}, el("td", {}, k), el("td", {}, el("span", { class: "pill " + (v ? "yes" : "no"), text: v ? "agree" : "disagree" })))));
    $("detail-json").textContent = JSON.stringify(d, null, 2);
    const dlg = $("detail");
    if (typeof dlg.showModal === "function") dlg.showModal(); else dlg.setAttribute("open", "");
  }

  function votePills(votes) {
    return el("div", { class: "votes" }, ...Object.entries(votes || {}).map(([k, v]) =>
      el("span", { class: "pill " + (v ? "yes" : "no"), text: k })));
  }

  function renderDecisions() {
    const list = model.decisions || [];
    $("decisions").replaceChildren(...list.slice(0, 100).map((d) => {
      const li = el("li", { "data-id": d.id },
        el("span", { class: "st " + (d.proposedStatus ? "up" : "down"), text: d.proposedStatus ? "online" : "offline" }), " ",
        el("strong", {}, d.memberName), " ", target(d), " ", family(d.isIPv6),
        el("span", { class: "when", text: (d.passed ? "passed" : "failed") + " · " + ago(d.seenAt)
          + (d.latencyMs != null ? " · " + d.latencyMs.toFixed(1) + " ms" : "") + " · by " + d.finalizer }),
        votePills(d.votes));
      li.addEventListener("click", () => showDetail(d));
      return li;
    }));
    $("decisions-empty").hidden = list.length > 0;
    $("decision-count").textContent = list.length;
    const props = model.proposals || [];
    $("proposals").replaceChildren(...props.slice(0, 50).map((p) => el("li", {},
      el("strong", {}, (p.proposal && p.proposal.MemberName) || p.id), " ",
      p.proposal ? (p.proposal.Endpoint || p.proposal.DomainName || "(site)") + " → " + (p.proposal.ProposedStatus ? "online" : "offline") : "",
      el("span", { class: "when", text: ago(p.receivedAt) }), votePills(p.votes))));
  }

  function renderOutages() {
    const o = model.outages;
    $("outages-section").hidden = o === null || o === undefined;
    if (!o) { $("open-outages").textContent = "–"; return; }
    $("open-outages").textContent = o.filter((x) => x.open).length;
    $("outages").tBodies[0].replaceChildren(...o.map((x) => el("tr", { class: x.open ? "offline" : null },
      el("td", {}, x.memberName), el("td", {}, x.checkType + "/" + x.checkName), el("td", {}, target(x)),
      el("td", {}, family(x.isIPv6)), el("td", {}, when(x.start)), el("td", {}, x.open ? "open" : when(x.end)),
      el("td", {}, hours(x.hours)),
      el("td", {}, votePills(x.votes && typeof x.votes === "object" && !Array.isArray(x.votes) ? x.votes : {})))));
    $("outages-empty").hidden = o.length > 0;
  }

  function renderUsage() {
    const u = model.usage;
    $("usage-section").hidden = !u;
    if (!u) return;
    const svg = $("usage-chart");
    const days = u.days || [];
    const max = Math.max(1, ...days.map((d) => d.hits));
    const total = days.reduce((a, d) => a + d.hits, 0);
    $("usage-empty").hidden = total > 0;
    svg.classList.toggle("gone", total === 0);
    const w = 600 / Math.max(1, days.length);
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren(...days.map((d, i) => {
      const h = Math.round((d.hits / max) * 150);
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("x", String(i * w + 1)); r.setAttribute("width", String(Math.max(1, w - 2)));
      r.setAttribute("y", String(160 - h)); r.setAttribute("height", String(h));
      const t = document.createElementNS(ns, "title"); t.textContent = d.date + ": " + d.hits + " hits";
      r.append(t);
      return r;
    }));
    const top = (id, rows, key) => $(id).replaceChildren(...rows.map((r) => el("li", {}, r[key] + " — " + r.hits.toLocaleString())));
    top("top-members", u.members || [], "member");
    top("top-countries", u.countries || [], "country");
  }

  function renderCluster() {
    const nodes = (model.cluster && model.cluster.nodes) || [];
    $("cluster").tBodies[0].replaceChildren(...nodes.map((n) => el("tr", {},
      el("td", {}, n.nodeId, n.isSelf ? el("span", { class: "pill", text: "this node" }) : ""),
      el("td", {}, n.role), el("td", {}, n.left ? "left" : n.active ? "active" : "stale"),
      el("td", { title: when(n.lastHeard) }, n.isSelf ? "now" : ago(n.lastHeard)),
      el("td", {}, n.publicAddress || (n.listenAddress ? n.listenAddress + ":" + n.listenPort : "")))));
    const active = nodes.filter((n) => n.active && !n.left && n.role === "IBPMonitor").length;
    $("monitor-count").textContent = active;
  }

  function fillFilters() {
    const dl = $("members");
    const names = new Set([...(model.members || []), ...(model.board || []).map((r) => r.memberName)]);
    if (dl.childElementCount !== names.size) dl.replaceChildren(...[...names].sort().map((n) => el("option", { value: n })));
    const sel = $("f-service");
    const services = new Set([...(model.services || []), ...(model.board || []).map((r) => r.service).filter(Boolean)]);
    if (sel.options.length - 1 !== services.size) {
      const cur = sel.value;
      sel.replaceChildren(el("option", { value: "", text: "any" }), ...[...services].sort().map((s) => el("option", { value: s, text: s })));
      sel.value = cur;
    }
  }

  function render() {
    const off = model.offline || 0;
    $("offline-count").textContent = off;
    $("offline-count").classList.toggle("bad", off > 0);
    $("sla-link").hidden = !model.sla;
    fillFilters();
    renderBoard(); renderDecisions(); renderOutages(); renderUsage(); renderCluster();
    document.body.dataset.rendered = String(Date.now());
  }

  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const r = await fetch("/v1/page", { cache: "no-store" });
      if (r.ok) { model = await r.json(); render(); }
    } catch (e) {
      $("live").textContent = "offline"; $("live").className = "live off";
    } finally {
      refreshing = false;
      if (again) { again = false; refresh(); }
    }
  }

  for (const id of ["f-member", "f-service", "f-status"]) {
    $(id).addEventListener("input", () => model && renderBoard());
    $(id).addEventListener("change", () => model && renderBoard());
  }
  $("filters").addEventListener("submit", (e) => e.preventDefault());

  if (window.EventSource) {
    const es = new EventSource("/v1/stream");
    es.onopen = () => { $("live").textContent = "live"; $("live").className = "live on"; };
    es.onerror = () => { $("live").textContent = "reconnecting…"; $("live").className = "live off"; };
    es.addEventListener("decision", refresh);
    es.addEventListener("lagged", refresh);
  }
  refresh();
  // Ages and anything that changed without a decision (local results, usage, the cluster).
  setInterval(refresh, 10000);
})();
