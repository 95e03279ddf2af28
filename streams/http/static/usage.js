// The usage page: reads /usage/{id}, /usage/{id}/daily?metric=… and /usage/{id}/alerts (relative URLs, so they reach
// the worker that served the page, which routes them to the workspace's owner) and draws one
// small SVG chart per metric. It refreshes itself, changing only what changed.
"use strict";

(function () {
  const REFRESH_MS = 4000;
  const CHART_HEIGHT = 220;
  const SVG = "http://www.w3.org/2000/svg";
  const workspace = document.body.dataset.workspace;
  const api = "../../usage/" + encodeURIComponent(workspace);

  // name -> [title, description], from the worker's table of metrics (core/metric_kinds.py)
  const METRICS = JSON.parse(document.body.dataset.metrics || "{}");
  const COLORS = { usage: "#1f6f5c", projection: "#1f6f5c", contracted: "#0550ae", alert: "#a63c00", scheduled: "#57606a", limit: "#b3152a" };

  const count = new Intl.NumberFormat("en");
  const dayFormat = new Intl.DateTimeFormat("en", { month: "short", day: "numeric", timeZone: "UTC" });
  const dayYearFormat = new Intl.DateTimeFormat("en", { month: "short", day: "numeric", year: "numeric", timeZone: "UTC" });
  const timeFormat = new Intl.DateTimeFormat("en", {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short",
  });
  const $ = (id) => document.getElementById(id);
  const sections = new Map();
  let last = null;
  let timer = null;
  let running = false;

  class NotFound extends Error {}

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (response.status === 404) throw new NotFound(url);
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  async function load() {
    const [usage, settings] = await Promise.all([getJson(api), getJson(api + "/settings")]);
    const names = Object.keys(usage.metrics);
    // With no metric yet, one daily document still gives the period's local dates.
    const wanted = names.length ? names : ["sms"];
    const [dailies, history] = await Promise.all([
      Promise.all(wanted.map((m) => getJson(api + "/daily?metric=" + encodeURIComponent(m)))),
      // The history is shown when it can be read; the figures are shown either way.
      getJson(api + "/alerts?period=current").catch(() => null),
    ]);
    return { usage, settings, names, history, daily: Object.fromEntries(wanted.map((m, i) => [m, dailies[i]])) };
  }

  async function tick() {
    clearTimeout(timer);
    if (running || document.hidden) return; // a visible page starts again on visibilitychange
    running = true;
    try {
      last = await load();
      render(last);
      setText($("status"), "");
      setText($("refreshed"), "Refreshed at " + new Date().toLocaleTimeString("en", { hourCycle: "h23" }) + " · refreshes every few seconds.");
    } catch (error) {
      if (error instanceof NotFound) {
        setText($("period"), "—");
        setText($("status"), "This workspace is unknown.");
        return;
      }
      setText($("status"), "Could not refresh the figures; trying again.");
    } finally {
      running = false;
    }
    timer = setTimeout(tick, REFRESH_MS);
  }

  // ---- the page ---------------------------------------------------------------------------

  function render({ usage, settings, names, daily, history }) {
    if (history) renderHistory(history);
    const period = periodOf(daily[Object.keys(daily)[0]]);
    setText($("period"), period.text);
    setText($("period-day"), period.day);
    $("empty").hidden = names.length > 0;
    $("contacts").hidden = settings.billing_contacts.length === 0;
    setText($("contact-list"), settings.billing_contacts.join(", "));
    for (const name of names) {
      const section = sections.get(name) || addSection(name, names);
      fill(section, name, usage.metrics[name], daily[name], period, usage.period_end);
      if (settings.may_change && name !== "seats") editor(section, name, settings.alerts[name]);
    }
  }

  // ---- the alert history of the period --------------------------------------------------

  const STATE_TEXT = { sent: "Sent", retrying: "Sending", refused: "Refused", given_up: "Given up",
                       held_back: "Held back", failed: "Failed", none: "—" };
  let historyShown = "";

  function renderHistory(history) {
    const shown = JSON.stringify(history);
    if (shown === historyShown) return; // unchanged: leave the rows as they are
    historyShown = shown;
    const rows = history.alerts.map((a) => ({ at: a.triggered_at, metric: a.metric, what: levelText(a), delivery: a.delivery }))
      .concat(history.transitions.map((t) => ({ at: t.at, metric: t.metric, what: "Limit " + (t.state === "disabled" ? "reached" : "lifted"), delivery: t.delivery })))
      .sort((x, y) => (x.at < y.at ? 1 : x.at > y.at ? -1 : 0));
    const body = $("history").querySelector("tbody");
    body.replaceChildren(...rows.map((r) => {
      const tr = el("tr", { "data-row": "alert" });
      tr.append(el("td", {}, timeFormat.format(new Date(r.at))), el("td", {}, (METRICS[r.metric] || [r.metric])[0]),
                el("td", {}, r.what), stateCell(mailText(r.delivery), r.delivery.email), stateCell(hooksText(r.delivery.webhooks), hooksState(r.delivery.webhooks)));
      return tr;
    }));
    $("history").hidden = rows.length === 0;
    $("history-empty").hidden = rows.length > 0;
  }

  function levelText(a) {
    return a.level + "% of " + count.format(a.threshold) + (a.kind === "forecast" ? " (forecast)" : "");
  }

  function mailText(d) {
    const sent = d.email_recipients.filter((r) => r.state === "sent").length;
    const text = STATE_TEXT[d.email] || d.email;
    return d.email_recipients.length > 1 && d.email !== "sent" ? text + " (" + sent + " of " + d.email_recipients.length + " sent)" : text;
  }

  function hooksState(hooks) {
    const states = new Set(hooks.map((h) => h.state));
    return states.size === 0 ? "none" : states.size === 1 ? [...states][0] : "mixed";
  }

  function hooksText(hooks) {
    if (hooks.length === 0) return "—";
    const state = hooksState(hooks);
    if (state !== "mixed") return STATE_TEXT[state] || state;
    const counts = new Map();
    for (const h of hooks) counts.set(h.state, (counts.get(h.state) || 0) + 1);
    return [...counts].map(([s, n]) => n + " " + (STATE_TEXT[s] || s).toLowerCase()).join(", ");
  }

  function stateCell(text, state) {
    return el("td", { "data-state": state, class: state === "sent" || state === "none" ? "" : "bad" }, text);
  }

  // ---- changing the alert (a token with billing permission) -------------------------------

  function editor(section, name, alert) {
    if (section.editor) return; // made once: a refresh never overwrites what the reader types
    const form = el("form", { class: "alert-edit", "data-form": "alert", novalidate: "" });
    form.innerHTML = `
      <fieldset><legend>Change the usage alert</legend>
        <label><input type="checkbox" name="enabled"> Alert on</label>
        <label>At <input type="number" name="threshold" min="1" step="1" inputmode="numeric" required></label>
        <label><input type="checkbox" name="early_warnings"> Also at 50% and 80%</label>
        <label><input type="checkbox" name="forecast_warnings"> Warn when the forecast reaches a level</label>
        <p class="note" data-fact="threshold-price" aria-live="polite"></p>
        <button type="submit">Save</button>
        <p class="note" data-fact="save-result" role="status"></p>
      </fieldset>`;
    const field = (n) => form.querySelector(`[name=${n}]`);
    field("enabled").checked = alert ? alert.enabled : true;
    field("threshold").value = alert && alert.threshold != null ? alert.threshold : "";
    field("early_warnings").checked = alert ? alert.early_warnings : true;
    field("forecast_warnings").checked = alert ? Boolean(alert.forecast_warnings) : false;
    const price = form.querySelector("[data-fact=threshold-price]");
    const result = form.querySelector("[data-fact=save-result]");
    let quoting = null;
    const quote = () => {
      clearTimeout(quoting);
      quoting = setTimeout(async () => {
        const level = field("threshold").value;
        if (!/^[1-9][0-9]{0,15}$/.test(level)) { setText(price, ""); return; }
        try {
          const answer = await getJson(api + "/settings/alerts/" + encodeURIComponent(name) + "/cost?threshold=" + level);
          if (field("threshold").value !== level) return; // typed on since
          setText(price, answer.cost ? "Reaching " + count.format(Number(level)) + " would cost " + money(answer.cost) + " this period"
            : "No price is set for this metric");
        } catch (_) {
          setText(price, "");
        }
      }, 250);
    };
    field("threshold").addEventListener("input", quote);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const level = field("threshold").value;
      if (!/^[1-9][0-9]{0,15}$/.test(level)) { setText(result, "Enter a whole number of 1 or more."); return; }
      setText(result, "Saving…");
      const body = { threshold: Number(level), early_warnings: field("early_warnings").checked, enabled: field("enabled").checked,
                     forecast_warnings: field("forecast_warnings").checked };
      try {
        const response = await fetch(api + "/settings/alerts/" + encodeURIComponent(name), {
          method: "PUT", headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body),
        });
        setText(result, saveText(response.status, await response.json()));
      } catch (_) {
        setText(result, "Not saved: the worker could not be reached. Try again.");
      }
      tick();
    });
    section.root.querySelector(".facts").append(form);
    section.editor = form;
    if (field("threshold").value) quote();
  }

  function saveText(status, answer) {
    if (status === 200 && answer.status === "scheduled") {
      const next = last && answer.effective_from === last.usage.period_end
        ? dayFormat.format(periodOf(last.daily[Object.keys(last.daily)[0]]).next) + " (next period)"
        : timeFormat.format(new Date(answer.effective_from));
      return "Saved. It is below the usage so far, so it applies from " + next + ".";
    }
    if (status === 200) return "Saved.";
    if (status === 202) return "Sent; it will apply in a moment.";
    return "Not saved: " + (answer.reason || answer.error || "HTTP " + status) + ".";
  }

  function periodOf(doc) {
    // period_end is exclusive; the first day is the contract's local date of period_start.
    const first = Date.parse(doc.days[0].date + "T00:00:00Z");
    const length = Math.round((Date.parse(doc.period_end) - Date.parse(doc.period_start)) / 86400000);
    const lastDay = first + (length - 1) * 86400000;
    const text = dayYearFormat.formatRange ? dayYearFormat.formatRange(first, lastDay)
      : dayYearFormat.format(first) + " – " + dayYearFormat.format(lastDay);
    return { first, length, next: first + length * 86400000, text, day: "Day " + doc.days.length + " of " + length + "." };
  }

  function addSection(name, order) {
    const [label, about] = METRICS[name] || [name, ""];
    const id = "metric-" + name;
    const section = el("section", { class: "metric", id, "aria-labelledby": id + "-h" });
    section.innerHTML = `
      <h2></h2>
      <p class="about"></p>
      <div class="metric-body">
        <div class="facts"><dl>
          <div data-row="usage"><dt></dt><dd data-fact="usage"></dd></div>
          <div data-row="cost"><dt>Estimated cost</dt><dd><span data-fact="cost"></span><span class="note" data-fact="cost-note"></span></dd></div>
          <div data-row="forecast"><dt>Projected</dt><dd><span data-fact="forecast"></span>
            <span class="note" data-fact="forecast-note"></span></dd></div>
          <div data-row="contract"><dt>Contracted</dt><dd data-fact="contract"></dd></div>
          <div data-row="alert"><dt>Usage alert</dt><dd><span data-fact="alert"></span>
            <span class="badge" data-fact="alert-level"></span><span class="note" data-fact="alert-note"></span></dd></div>
          <div data-row="scheduled"><dt>Scheduled alert</dt><dd data-fact="scheduled"></dd></div>
          <div data-row="limit"><dt>Limit</dt><dd data-fact="limit"></dd></div>
          <div data-row="limit-state"><dt>State</dt><dd data-fact="limit-state"></dd></div>
          <div data-row="updated"><dt>Last updated</dt><dd data-fact="updated"><time></time></dd></div>
        </dl></div>
        <figure class="chart"><div class="plot"></div><ul class="legend"></ul>
          <div class="visually-hidden"><table><caption></caption>
            <thead><tr><th scope="col">Date</th><th scope="col"></th></tr></thead><tbody></tbody></table></div>
        </figure>
      </div>`;
    section.querySelector("h2").id = id + "-h";
    section.querySelector("h2").textContent = label;
    section.querySelector(".about").textContent = about;
    const seats = name === "seats";
    section.querySelector("[data-row=usage] dt").textContent = seats ? "Seats in use" : "Used so far";
    section.querySelector("caption").textContent = label + (seats ? ": seats in use each day" : ": usage so far, by day");
    section.querySelector("thead th:last-child").textContent = seats ? "Seats" : "Cumulative usage";
    const fin = name === "fin_resolutions";
    section.querySelector("[data-row=limit] dt").textContent = fin ? "Fin limit" : "Hard limit";
    section.querySelector("[data-row=limit-state] dt").textContent = fin ? "Fin AI Agent" : label;
    // Keep the API's order of metrics, whatever order they first appear in.
    const after = order.slice(order.indexOf(name) + 1).map((m) => sections.get(m)).find(Boolean);
    $("metrics").insertBefore(section, after ? after.root : null);
    const entry = { root: section, key: "", rows: "" };
    sections.set(name, entry);
    return entry;
  }

  function fill(section, name, m, doc, period, periodEnd) {
    const root = section.root;
    const fact = (key) => root.querySelector(`[data-fact=${key}]`);
    const row = (key, shown) => { root.querySelector(`[data-row=${key}]`).hidden = !shown; };
    const label = (METRICS[name] || [name])[0];
    const lines = referenceLines(name, m, period, periodEnd);

    setText(fact("usage"), count.format(m.usage));
    setText(fact("cost"), m.estimated_cost ? money(m.estimated_cost) : "—");
    let note = m.estimated_cost && !m.contract ? "Pay-as-you-go: billed at the end of the period" : "";
    if (name === "seats" && m.estimated_cost) note = "Seats are prorated by daily use; your invoice may differ";
    setText(fact("cost-note"), note);
    const projected = doc.cumulative && m.forecast ? m.forecast : null;
    row("forecast", Boolean(projected));
    setText(fact("forecast"), projected ? forecastText(projected) : "");
    setText(fact("forecast-note"), projected ? forecastNote(projected) : "");
    row("contract", Boolean(m.contract));
    setText(fact("contract"), contractText(m));
    row("alert", name !== "seats");
    setText(fact("alert"), alertText(m));
    const level = reachedLevel(m);
    setText(fact("alert-level"), level ? level + "% reached" : "");
    setText(fact("alert-note"), m.alert && m.alert.enabled && m.alert.early_warnings ? "Also alerts at 50% and 80%" : "");
    row("scheduled", Boolean(m.scheduled_alert));
    setText(fact("scheduled"), m.scheduled_alert ? scheduledText(m.scheduled_alert, period, periodEnd) : "");
    const limited = name === "fin_resolutions" || Boolean(m.limit);
    const off = limitState(name, m) === "disabled";
    row("limit", limited);
    row("limit-state", limited);
    setText(fact("limit"), limited ? limitText(name, m) : "");
    setText(fact("limit-state"), off ? "Off: limit reached" : "On");
    fact("limit-state").classList.toggle("badge", off);
    const time = fact("updated").querySelector("time");
    setText(time, m.last_updated ? timeFormat.format(new Date(m.last_updated)) : "No usage yet this period");
    if (m.last_updated) time.dateTime = m.last_updated; else time.removeAttribute("datetime");

    const summary = summaryText(label, name, m);
    const plot = root.querySelector(".plot");
    const width = Math.max(260, Math.round(plot.clientWidth || 600));
    const projection = projected ? projected.usage : null;
    const key = JSON.stringify([width, summary, doc.days, lines, period.length, projection]);
    if (key !== section.key) {
      section.key = key;
      const svg = chart(doc, period, lines, width, summary, projection);
      if (plot.firstChild) plot.firstChild.replaceWith(svg); else plot.append(svg);
      const usageItem = { kind: "usage", label: doc.cumulative ? "Usage so far" : "Seats each day" };
      const items = [usageItem];
      if (projection != null) items.push({ kind: "projection", label: "Projected: " + count.format(projection) });
      root.querySelector(".legend").replaceChildren(...[...items, ...lines].map(legendItem));
    }
    const rows = JSON.stringify(doc.days);
    if (rows !== section.rows) {
      section.rows = rows;
      const body = root.querySelector("tbody");
      body.replaceChildren(...doc.days.map((d) => {
        const tr = el("tr");
        tr.append(el("th", { scope: "row" }, dayYearFormat.format(Date.parse(d.date + "T00:00:00Z"))), el("td", {}, count.format(d.usage)));
        return tr;
      }));
    }
  }

  // ---- words ------------------------------------------------------------------------------

  function money(cost) {
    const decimals = (cost.amount.split(".")[1] || "").length;
    try {
      return new Intl.NumberFormat("en", {
        style: "currency", currency: cost.currency, minimumFractionDigits: decimals, maximumFractionDigits: decimals,
      }).format(cost.amount);
    } catch (_) {
      return cost.amount + " " + cost.currency;
    }
  }

  function contractText(m) {
    if (!m.contract) return "";
    const text = count.format(m.contract.included) + " included";
    return m.contract.usage === m.usage ? text
      : text + "; " + count.format(m.contract.usage) + " used by all the contract's workspaces";
  }

  function reachedLevel(m) {
    const a = m.alert;
    if (!a || !a.enabled) return 0;
    const levels = a.early_warnings ? [100, 80, 50] : [100];
    return levels.find((level) => m.usage * 100 >= a.threshold * level) || 0;
  }

  function alertText(m) {
    if (!m.alert) return "Not set";
    if (!m.alert.enabled) return "Off";
    return "At " + count.format(m.alert.threshold);
  }

  function scheduledText(s, period, periodEnd) {
    const when = s.effective_from === periodEnd ? dayFormat.format(period.next) + " (next period)"
      : timeFormat.format(new Date(s.effective_from));
    return (s.enabled ? "At " + count.format(s.threshold) : "Off") + " from " + when;
  }

  function forecastText(f) {
    return count.format(f.usage) + " by the end of the period" + (f.estimated_cost ? ", " + money(f.estimated_cost) : "");
  }

  function forecastNote(f) {
    const pace = "At the last " + (f.basis_days === 1 ? "day's" : f.basis_days + " days'") + " pace";
    const next = f.levels.find((l) => !l.reached && l.projected_date);
    if (!next) return pace;
    return pace + ", it reaches " + next.percent + "% of the alert around " + dayFormat.format(Date.parse(next.projected_date + "T00:00:00Z"));
  }

  function limitState(name, m) {
    return name === "fin_resolutions" ? m.fin_state : m.limit_state;
  }

  function limitText(name, m) {
    if (!m.limit || !m.limit.enabled) return "No limit";
    return count.format(m.limit.limit) + (name === "fin_resolutions" ? " resolutions" : "");
  }

  function summaryText(label, name, m) {
    const parts = [label + ": " + count.format(m.usage) + (name === "seats" ? " seats in use" : " used")];
    if (m.contract) {
      parts[0] += m.contract.usage === m.usage ? " of " + count.format(m.contract.included) + " contracted"
        : " (contract: " + count.format(m.contract.usage) + " of " + count.format(m.contract.included) + " contracted)";
    } else if (m.estimated_cost) {
      parts.push("pay-as-you-go");
    }
    if (m.alert && m.alert.enabled) parts.push("alert at " + count.format(m.alert.threshold));
    if (m.scheduled_alert && m.scheduled_alert.enabled) parts.push("alert at " + count.format(m.scheduled_alert.threshold) + " from the next period");
    if (m.limit && m.limit.enabled) parts.push("limit " + count.format(m.limit.limit));
    if (name === "fin_resolutions") parts.push("Fin AI Agent " + (m.fin_state === "disabled" ? "off" : "on"));
    else if (m.limit) parts.push(limitState(name, m) === "disabled" ? "off: limit reached" : "on");
    if (m.estimated_cost) parts.push("estimated cost " + money(m.estimated_cost));
    if (m.forecast && name !== "seats") parts.push("projected " + count.format(m.forecast.usage) + " by the end of the period");
    return parts.join("; ");
  }

  // ---- the chart --------------------------------------------------------------------------

  function referenceLines(name, m, period, periodEnd) {
    const lines = [];
    if (m.contract && m.contract.included != null) {
      lines.push({ kind: "contracted", value: m.contract.included, label: "Contracted " + count.format(m.contract.included) });
    }
    if (m.alert && m.alert.enabled) lines.push({ kind: "alert", value: m.alert.threshold, label: "Alert " + count.format(m.alert.threshold) });
    const s = m.scheduled_alert;
    if (s && s.enabled) {
      const when = s.effective_from === periodEnd ? dayFormat.format(period.next) : timeFormat.format(new Date(s.effective_from));
      lines.push({ kind: "scheduled", value: s.threshold, label: "Alert from " + when + ": " + count.format(s.threshold) });
    }
    if (m.limit && m.limit.enabled) {
      lines.push({ kind: "limit", value: m.limit.limit, label: "Limit " + count.format(m.limit.limit) });
    }
    return lines;
  }

  function chart(doc, period, lines, width, summary, projection) {
    const values = doc.days.map((d) => d.usage);
    const top = niceTop(Math.max(1, ...values, ...lines.map((l) => l.value), projection || 0));
    const ticks = [0, top / 2, top];
    const left = 12 + 7 * Math.max(...ticks.map((t) => count.format(t).length));
    const box = { left, right: width - 10, top: 14, bottom: CHART_HEIGHT - 26 };
    const slot = (box.right - box.left) / period.length;
    const y = (v) => box.bottom - (Math.max(0, v) / top) * (box.bottom - box.top);

    const svg = el("svg", { viewBox: `0 0 ${width} ${CHART_HEIGHT}`, role: "img", "aria-label": summary, focusable: "false" }, null, SVG);
    svg.append(el("title", {}, summary, SVG));
    for (const t of ticks) {
      svg.append(el("line", { x1: box.left, x2: box.right, y1: y(t), y2: y(t), class: "grid" }, null, SVG));
      svg.append(el("text", { x: box.left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" }, count.format(t), SVG));
    }
    const lastDay = period.first + (period.length - 1) * 86400000;
    svg.append(el("text", { x: box.left, y: CHART_HEIGHT - 6, class: "tick" }, dayFormat.format(period.first), SVG));
    svg.append(el("text", { x: box.right, y: CHART_HEIGHT - 6, "text-anchor": "end", class: "tick" }, dayFormat.format(lastDay), SVG));
    const todayX = box.left + (values.length - (doc.cumulative ? 0 : 0.5)) * slot; // the last point or bar
    if (todayX - box.left > 70 && box.right - todayX > 70) {
      svg.append(el("line", { x1: todayX, x2: todayX, y1: box.bottom, y2: box.bottom + 4, class: "grid" }, null, SVG));
      svg.append(el("text", { x: todayX, y: CHART_HEIGHT - 6, "text-anchor": "middle", class: "tick" }, "Today", SVG));
    }

    const segments = []; // the data's outline, so that line labels can stay clear of it
    if (doc.cumulative) {
      // Cumulative: 0 at the start of the period, then the total at the end of each day so far.
      const points = [[box.left, y(0)], ...values.map((v, i) => [box.left + (i + 1) * slot, y(v)])];
      const line = points.map(([px, py]) => px.toFixed(1) + "," + py.toFixed(1)).join(" L");
      const [endX, endY] = points[points.length - 1];
      svg.append(el("path", { d: `M${line} L${endX.toFixed(1)},${box.bottom} Z`, class: "area", fill: COLORS.usage }, null, SVG));
      svg.append(el("path", { d: "M" + line, class: "usage", stroke: COLORS.usage }, null, SVG));
      if (projection != null && endX < box.right) {
        // Where the recent pace leads by the period's end (the forecast), dashed.
        const py = y(projection);
        svg.append(el("path", { d: `M${endX.toFixed(1)},${endY.toFixed(1)} L${box.right.toFixed(1)},${py.toFixed(1)}`,
          class: "projection", stroke: COLORS.projection }, null, SVG));
        segments.push([endX, endY, box.right, py]);
      }
      svg.append(el("circle", { cx: endX, cy: endY, r: 4, fill: COLORS.usage }, null, SVG));
      points.slice(1).forEach(([px, py], i) => segments.push([...points[i], px, py]));
      segments.push([endX - 6, endY, endX + 6, endY], [endX, endY - 6, endX, endY + 6]); // the dot
    } else {
      values.forEach((v, i) => {
        const x = box.left + i * slot + slot * 0.15, w = Math.max(1, slot * 0.7);
        svg.append(el("rect", { x, y: y(v), width: w, height: box.bottom - y(v), fill: COLORS.usage }, null, SVG));
        segments.push([x, y(v), x + w, y(v)], [x + w / 2, y(v), x + w / 2, box.bottom]);
      });
    }
    // Reference lines; the dashed alert line is drawn over a contracted line at the same level.
    let labelFloor = Infinity;
    for (const l of [...lines].sort((a, b) => a.value - b.value)) {
      const ly = y(l.value);
      svg.append(el("line", { x1: box.left, x2: box.right, y1: ly, y2: ly, class: "ref " + l.kind, stroke: COLORS[l.kind] }, null, SVG));
      const ty = Math.max(box.top - 2, Math.min(ly - 5, labelFloor - 14));
      labelFloor = ty;
      const short = count.format(l.value);
      // The label where the data is not in the way: at the right end, else the left; else
      // just the number; else none (the legend under the chart names every line anyway).
      const spots = [[l.label, "end", ty], [l.label, "start", ty], [short, "end", ty], [short, "end", ly + 15], [short, "start", ty]];
      const spot = spots.find(([text, anchor, at]) => {
        const w = text.length * 7, x0 = anchor === "end" ? box.right - 2 - w : box.left + 4;
        return at > box.top - 4 && at < box.bottom - 2 && !crosses(segments, { left: x0 - 4, right: x0 + w + 4, top: at - 14, bottom: at + 4 });
      });
      if (spot) {
        const [text, anchor, at] = spot;
        const x = anchor === "end" ? box.right - 2 : box.left + 4;
        svg.append(el("text", { x, y: at, "text-anchor": anchor, class: "ref-label", fill: COLORS[l.kind] }, text, SVG));
      }
    }
    return svg;
  }

  function crosses(segments, r) {
    return segments.some(([x1, y1, x2, y2]) => {
      for (let t = 0; t <= 1; t += 0.05) {
        const x = x1 + (x2 - x1) * t, y = y1 + (y2 - y1) * t;
        if (x >= r.left && x <= r.right && y >= r.top && y <= r.bottom) return true;
      }
      return false;
    });
  }

  function legendItem(l) {
    const swatch = el("svg", { width: 28, height: 10, "aria-hidden": "true", focusable: "false" }, null, SVG);
    const kind = l.kind === "usage" || l.kind === "projection" ? l.kind : "ref " + l.kind;
    swatch.append(el("line", { x1: 1, x2: 27, y1: 5, y2: 5, class: kind, stroke: COLORS[l.kind] }, null, SVG));
    const item = el("li");
    item.append(swatch, document.createTextNode(l.label));
    return item;
  }

  function niceTop(max) {
    const raw = (max * 1.1) / 2; // two steps: 0, half, top
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5, 8, 10].map((f) => f * magnitude).find((s) => s >= raw);
    return 2 * Math.max(1, Math.ceil(step));
  }

  // ---- helpers ----------------------------------------------------------------------------

  function el(tag, attrs = {}, text = null, ns = null) {
    const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text != null) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  let resized = null;
  window.addEventListener("resize", () => {
    clearTimeout(resized);
    resized = setTimeout(() => last && render(last), 150);
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
  tick();
})();
