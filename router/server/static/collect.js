/* router first-party pixel. Serve from your own domain (proxy /collect and /collect.js
 * to the router) so cookies are first-party. Usage:
 *   <script src="/collect.js" data-account="demo" data-environment="production" async></script>
 *   router("add_to_cart", {value: 19.9, currency: "EUR", items: [{id: "SKU-1", quantity: 1}]});
 *   router("identify", {email: "jane@example.com"});   // sets user fields for later events
 * Consent: router("consent", {ad_storage: "granted", analytics_storage: "granted", ...}).
 */
(function (w, d) {
  "use strict";
  var script = d.currentScript || d.querySelector("script[data-account]");
  var account = script && script.getAttribute("data-account");
  var environment = (script && script.getAttribute("data-environment")) || "production";
  var endpoint = (script && script.getAttribute("data-endpoint")) || "/collect";
  var user = {};
  var consent = null;
  var queue = (w.router && w.router.q) || [];

  function uuid() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = (Math.random() * 16) | 0;
      return (c === "x" ? r : (r & 0x3) | 0x8).toString(16);
    });
  }

  function send(name, data, options) {
    var message = {
      event: name,
      event_id: (options && options.event_id) || uuid(),
      timestamp: new Date().toISOString(),
      page: {url: w.location.href, referrer: d.referrer || undefined, title: d.title},
      data: data || {},
      user: user,
      consent: consent || undefined
    };
    var url = endpoint + "?account=" + encodeURIComponent(account) +
      "&environment=" + encodeURIComponent(environment);
    var body = JSON.stringify(message);
    if (w.fetch) {
      return w.fetch(url, {method: "POST", body: body, credentials: "include", keepalive: true,
        headers: {"Content-Type": "application/json"}}).catch(function () {});
    }
    if (navigator.sendBeacon) navigator.sendBeacon(url, body);
  }

  function router(command, data, options) {
    if (command === "identify") { for (var k in data) user[k] = data[k]; return; }
    if (command === "consent") { consent = data; return; }
    return send(command, data, options);
  }

  w.router = router;
  for (var i = 0; i < queue.length; i++) router.apply(null, queue[i]);
  if (!script || script.getAttribute("data-page-view") !== "false") send("page_view", {});
})(window, document);
