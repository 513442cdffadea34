/* hebdo sign-up box: enhances each <div data-hebdo-form> (its no-JS form, or builds one). */
(() => {
const d = document, me = d.currentScript;
const BASE = me ? me.src.replace(/(\/static\/embed)?\/embed\.js.*/, "") : "", API = BASE + "/api/v1/subscriptions";
// The server's answers and /form's "messages" bring the other texts.
const T = {
fr: ["Rejoignez gratuitement la communauté", "et suivez chaque semaine l’actualité",
    "Votre adresse e-mail", "S’inscrire", "Corriger en {s}", "Vouliez-vous dire {s} ?",
    "Le service est momentanément indisponible. Réessayez dans un instant."],
en: ["Join the community for free", "and follow the news every week",
    "Your email address", "Subscribe", "Change it to {s}", "Did you mean {s}?",
    "The service is unavailable for a moment. Please try again shortly."]
};
const WIDGET = { turnstile: "cf-turnstile", hcaptcha: "h-captcha", friendlycaptcha: "frc-captcha" };
const el = (tag, props) => Object.assign(d.createElement(tag), props);
const loaded = {};

function init(root) {
  if (root.hebdo) return;
  root.hebdo = 1;
  const lang = /^en\b/i.test(root.dataset.lang || d.documentElement.lang) ? "en" : "fr", t = T[lang];
  let f = root.querySelector("form");
  if (!f || f.lang != lang) {
    const typed = f && f.elements.email ? f.elements.email.value : "";
    root.innerHTML = `<form class="hebdo-box" method="post" lang="${lang}" action="${API}" aria-labelledby="hebdo-heading">
<h2 class="hebdo-heading" id="hebdo-heading">${t[0]}</h2><p class="hebdo-lead">${t[1]}</p><input type="hidden" name="locale" value="${lang}">
<div class="hebdo-hp" aria-hidden="true"><input name="website" tabindex="-1" autocomplete="off"></div><div class="hebdo-row">
<label class="hebdo-label">${t[2]} <input type="text" name="email" inputmode="email" autocomplete="email" maxlength="254">
</label><button type="submit">${t[3]}</button></div><p class="hebdo-msg" role="status" aria-live="polite"></p></form>`;
    f = root.querySelector("form");
    f.elements.email.value = typed;
  }
  const els = f.elements, email = els.email, msg = f.querySelector(".hebdo-msg");
  const btn = f.querySelector("[type=submit]");
  const s = { ts: els.ts ? els.ts.value : "", at: Date.now(), min: 0, m: {}, hp: "website" };
  const tx = (key, sub) => (s.m[key] || t[key] || "").replace("{s}", sub);
  f.noValidate = true;
  // CSSOM, not a style attribute: strict CSPs allow it.
  f.querySelector(".hebdo-hp").style.cssText = "position:absolute;left:-1e4px;width:1px;height:1px;overflow:hidden";
  msg.id ||= "hebdo" + Math.random();
  email.setAttribute("aria-describedby", msg.id);

  const say = (text, error, sug) => {
    msg.textContent = text || "";
    msg.className = "hebdo-msg" + (error ? " hebdo-err" : "");
    if (!sug) return;
    const fix = el("button", { type: "button", className: "hebdo-fix", textContent: tx(4, sug) });
    fix.onclick = () => {
      email.value = sug;
      email.removeAttribute("aria-invalid");
      say(tx("box.corrected"));
      email.focus();
    };
    msg.append(" ", fix);
  };

  const consent = (c) => {
    const ticked = els.consent_given?.checked;
    f.querySelectorAll(".hebdo-consent,[name=consent]").forEach((n) => n.remove());
    if (!c) return;
    const label = el("label", { className: "hebdo-consent" });
    label.append(el("input", { type: "checkbox", name: "consent_given", value: "1", checked: !!ticked }), " " + c.text);
    btn.before(label, el("input", { type: "hidden", name: "consent", value: c.version }));
  };

  const captcha = (c) => {
    if (!WIDGET[c?.provider] || f.querySelector("[data-sitekey]")) return;
    const w = el("div", { className: WIDGET[c.provider] + " hebdo-captcha" }), api = window[c.provider];
    w.dataset.sitekey = c.site_key;
    btn.before(w);
    // Its script renders the widgets present when it loads.
    if (loaded[c.script]) return api?.render?.(w, { sitekey: c.site_key });
    loaded[c.script] = 1;
    d.head.append(el("script", { src: c.script, async: true, type: c.provider == "friendlycaptcha" ? "module" : "" }));
  };

  fetch(API + "/form?lang=" + lang, { credentials: "omit" })
    .then((r) => r.ok && r.json())
    .then((c) => {
      if (!c) return;
      Object.assign(s, { ts: c.ts, at: Date.now(), min: c.min_seconds || 0, m: c.messages || {}, hp: c.honeypot || s.hp });
      consent(c.consent);
      captcha(c.captcha);
    })
    .catch(() => {});

  const show = (status, r) => {
    const bad = status == 422 && r.error == "invalid_email", sug = r.suggestion;
    s.busy = 0;
    bad ? email.setAttribute("aria-invalid", "true") : email.removeAttribute("aria-invalid");
    if (status == 202) say(r.message + (sug ? " " + (r.suggestion_message || tx(5, sug)) : ""), 0, sug);
    else if (status == 422 && r.message) say(r.message + (sug ? " " + tx(5, sug) : ""), 1, sug);
    else if (status == 429) say(r.message || tx("rate_limited"), 1);
    else if (status == 400 && r.captcha) captcha(r.captcha), say(r.message, 1);
    else say(tx("box.unavailable") || t[6], 1);
    if (bad) email.focus();
  };

  f.addEventListener("submit", (event) => {
    event.preventDefault();
    const agreed = els.consent_given, token = f.querySelector("[name$=-response],[name=frc-captcha-solution]");
    if (s.busy) return;
    if (agreed && !agreed.checked) return say(tx("consent_required"), 1), agreed.focus();
    const body = { email: email.value, locale: lang, source: location.href, ts: s.ts, [s.hp]: els[s.hp]?.value || "" };
    if (agreed) Object.assign(body, { consent: els.consent.value, consent_given: "1" });
    if (token?.value) body.captcha_token = token.value;
    s.busy = 1;
    say(tx("box.sending") || "…");
    // Sooner than min_seconds after the form was shown, a post is dropped as a bot's.
    setTimeout(() => fetch(API, { method: "POST", credentials: "omit", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", Accept: "application/json" } })
      .then((r) => r.json().catch(() => ({})).then((j) => show(r.status, j)))
      .catch(() => show(0, {})), s.min * 1000 - (Date.now() - s.at));
  });
}

const start = () => {
  const css = BASE + "/embed.css";
  if (!d.querySelector(`link[href="${css}"]`)) d.head.append(el("link", { rel: "stylesheet", href: css }));
  d.querySelectorAll("[data-hebdo-form]").forEach(init);
};
if (d.readyState == "loading") d.addEventListener("DOMContentLoaded", start);
else start();
})();
