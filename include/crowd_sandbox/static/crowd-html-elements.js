/*
 * The crowd sandbox's offline stand-in for https://assets.crowd.aws/crowd-html-elements.js.
 *
 * Written for the sandbox (not MTurk's code): custom elements for the Crowd HTML Elements
 * requesters use most, and crowd-form's submission as MTurk stores it: one field,
 * taskAnswers, holding JSON (a list with one object), posted with assignmentId to
 * {turkSubmitTo}/mturk/externalSubmit. include/crowd_sandbox/crowd_elements.py documents the
 * JSON shape per element; its task_answers() is the same encoder in Python (the tests compare
 * the two in Chromium), so keep them in step.
 *
 * Implemented: crowd-form (appends a Submit button unless it holds a
 * crowd-button[form-action=submit] or a submit button; disabled in preview), crowd-button,
 * crowd-input, crowd-text-area, crowd-checkbox, crowd-radio-group, crowd-radio-button,
 * crowd-classifier, crowd-image-classifier, crowd-instructions, crowd-alert. Light DOM, plain
 * styles: they behave like MTurk's elements, they do not look like them.
 */
(function () {
  "use strict";
  if (window.customElements === undefined || customElements.get("crowd-form")) {
    return;
  }

  var PREVIEW = "ASSIGNMENT_ID_NOT_AVAILABLE";
  var TEXT = ["crowd-input", "crowd-text-area"];
  var TOGGLE = ["crowd-checkbox", "crowd-radio-button"];
  var CLASSIFIERS = ["crowd-classifier", "crowd-image-classifier"];
  var NOT_SENT = ["submit", "button", "reset", "image", "file"];
  var FIELDS = TEXT.concat(TOGGLE, CLASSIFIERS);
  var SCRIPT_ORIGIN = location.origin;
  try { // an inline copy of the script has no src; a data: page is no base URL
    if (document.currentScript && document.currentScript.src) {
      SCRIPT_ORIGIN = new URL(document.currentScript.src, location.href).origin;
    }
  } catch (e) {
    SCRIPT_ORIGIN = location.origin;
  }
  var params = new URLSearchParams(location.search);
  var counter = 0;

  function uid(prefix) {
    counter += 1;
    return "__crowd_" + prefix + "_" + counter;
  }

  function whenParsed(fn) {
    // A synchronous script runs before the elements' children are parsed.
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", fn, { once: true });
    } else {
      fn();
    }
  }

  function make(tag, attrs, text) {
    var el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      el.setAttribute(k, attrs[k]);
    });
    if (text !== undefined) {
      el.textContent = text;
    }
    return el;
  }

  function moveChildren(from, to) {
    while (from.firstChild) {
      to.appendChild(from.firstChild);
    }
  }

  /* categories="['a', 'b']" (MTurk's examples) or JSON: every quoted string, in order. */
  function categories(text) {
    var found = [];
    var re = /'([^']*)'|"([^"]*)"/g;
    var m;
    while ((m = re.exec(text || "")) !== null) {
      found.push(m[1] !== undefined ? m[1] : m[2]);
    }
    return found;
  }

  /* --- the encoder (crowd_elements.task_answers in Python) ------------------------------- */

  function fieldsOf(form) {
    var wanted = FIELDS.concat(["input", "textarea", "select"]).join(",");
    var inside = FIELDS.join(",");
    return Array.prototype.filter.call(form.querySelectorAll(wanted), function (el) {
      return !(el.parentElement && el.parentElement.closest(inside));
    });
  }

  function entriesOf(form) {
    var out = [];
    fieldsOf(form).forEach(function (el) {
      var tag = el.localName;
      var name = el.getAttribute("name") || "";
      if (!name || el.hasAttribute("disabled")) {
        return;
      }
      if (TEXT.indexOf(tag) >= 0) {
        out.push(["text", name, el.value || ""]);
      } else if (TOGGLE.indexOf(tag) >= 0) {
        out.push(["toggle", name, el.getAttribute("value") || "on", !!el.checked]);
      } else if (CLASSIFIERS.indexOf(tag) >= 0) {
        if (categories(el.getAttribute("categories")).length) {
          out.push(["label", name, el.value || ""]);
        }
      } else if (tag === "input") {
        var type = (el.getAttribute("type") || "text").toLowerCase();
        if (NOT_SENT.indexOf(type) >= 0) {
          return;
        }
        if (type === "radio" || type === "checkbox") {
          out.push(["toggle", name, el.getAttribute("value") || "on", el.checked]);
        } else {
          out.push(["text", name, el.value]);
        }
      } else {
        out.push(["text", name, el.value]);
      }
    });
    return out;
  }

  function encode(entries) {
    var result = Object.create(null);
    entries.forEach(function (e) {
      var kind = e[0], name = e[1], value = e[2];
      if (kind === "toggle") {
        var box = result[name];
        if (typeof box !== "object" || box === null) {
          box = result[name] = Object.create(null);
        }
        box[value] = e[3];
      } else if (kind === "label") {
        if (value) {
          result[name] = { label: value };
        }
      } else if (value !== "") {
        result[name] = value;
      }
    });
    return JSON.stringify([result]);
  }

  /* Where the answers go: {turkSubmitTo}/mturk/externalSubmit. turkSubmitTo comes from the
   * page's URL, which anyone can write in a link: only an http(s) URL on this sandbox (the
   * script's origin or the page's) is taken, so a link cannot send the answers to another host
   * or make the form run a javascript: URL; anything else posts to the script's origin. */
  function submitBase() {
    var given = params.get("turkSubmitTo");
    if (given) {
      try {
        var url = new URL(given, location.href);
        if ((url.protocol === "http:" || url.protocol === "https:") &&
          (url.origin === SCRIPT_ORIGIN || url.origin === location.origin)) {
          return (url.origin + url.pathname).replace(/\/+$/, "");
        }
      } catch (e) {
        // not a URL: the script's origin
      }
    }
    return SCRIPT_ORIGIN;
  }

  /* --- styles ---------------------------------------------------------------------------- */

  var style = make("style", {}, [
    "crowd-form, crowd-radio-group, crowd-instructions, crowd-alert, crowd-classifier,",
    "crowd-image-classifier, crowd-input, crowd-text-area, short-instructions,",
    "full-instructions { display: block; }",
    "crowd-form { margin: 0 0 12px; }",
    "crowd-checkbox, crowd-radio-button { display: block; margin: 4px 0; }",
    "crowd-input, crowd-text-area { margin: 8px 0; }",
    ".crowd-label { display: block; font-size: 90%; color: #444; }",
    ".crowd-field { padding: 6px; font: inherit; min-width: 260px; }",
    ".crowd-invalid .crowd-field, .crowd-invalid.crowd-choices { outline: 2px solid #c0392b; }",
    ".crowd-button { padding: 8px 20px; font: inherit; cursor: pointer; }",
    "crowd-button[variant=primary] .crowd-button { background: #1f6feb; color: #fff;",
    "  border: 1px solid #1f6feb; border-radius: 4px; }",
    ".crowd-button:disabled { opacity: 0.5; cursor: default; }",
    ".crowd-submit-row { margin-top: 12px; }",
    ".crowd-message { margin: 8px 0; color: #c0392b; }",
    "crowd-alert { padding: 10px 14px; border-radius: 4px; margin: 8px 0;",
    "  background: #e8f1fb; border: 1px solid #9cc2ec; }",
    "crowd-alert[type=success] { background: #e9f7ec; border-color: #8fd19e; }",
    "crowd-alert[type=warning] { background: #fff7e0; border-color: #f0c36d; }",
    "crowd-alert[type=error] { background: #fdecea; border-color: #f5a9a0; }",
    ".crowd-dismiss { float: right; border: 0; background: none; cursor: pointer; }",
    "crowd-instructions > details, full-instructions > details { margin: 8px 0; }",
    "crowd-instructions summary, full-instructions summary { cursor: pointer; color: #1f6feb; }",
    ".crowd-classifier-header { font-weight: bold; margin: 8px 0; }",
    ".crowd-choices label { display: block; margin: 4px 0; }",
    ".crowd-image { max-width: 100%; max-height: 60vh; display: block; margin: 8px 0; }",
    "short-instructions { margin: 8px 0; padding: 8px; background: #f6f8fa; }",
    "crowd-form[data-preview] .crowd-preview-note { display: block; }",
    ".crowd-preview-note { display: none; color: #555; margin-top: 6px; }",
  ].join("\n"));
  (document.head || document.documentElement).appendChild(style);

  /* --- crowd-form ------------------------------------------------------------------------ */

  function isSubmitControl(el) {
    if (el.localName === "crowd-button") {
      return el.getAttribute("form-action") === "submit";
    }
    if (el.closest && el.closest("crowd-button")) {
      return false; // the button a crowd-button renders
    }
    if (el.localName === "button") {
      return (el.getAttribute("type") || "submit").toLowerCase() === "submit";
    }
    return el.localName === "input" && (el.getAttribute("type") || "").toLowerCase() === "submit";
  }

  class CrowdForm extends HTMLElement {
    connectedCallback() {
      if (this._ready) {
        return;
      }
      this._ready = true;
      var form = this;
      this.addEventListener("click", function (event) {
        var target = event.target.closest("crowd-button") ||
          event.target.closest("button, input");
        if (target && form.contains(target) && isSubmitControl(target)) {
          event.preventDefault();
          if (!target.hasAttribute("disabled")) {
            form.submit();
          }
        }
      });
      whenParsed(function () {
        form._render();
      });
    }

    _render() {
      var controls = this.querySelectorAll("crowd-button, button, input");
      var hasSubmit = Array.prototype.some.call(controls, isSubmitControl);
      if (!hasSubmit) {
        var row = make("div", { class: "crowd-submit-row" });
        row.appendChild(
          make("crowd-button", { "form-action": "submit", variant: "primary" }, "Submit")
        );
        this.appendChild(row);
      }
      this._message = make("div", { class: "crowd-message", role: "alert" });
      this.appendChild(this._message);
      if (this.assignmentId === PREVIEW) {
        this.setAttribute("data-preview", "");
        this.appendChild(
          make("div", { class: "crowd-preview-note" }, "Accept the HIT to submit your answers.")
        );
        Array.prototype.forEach.call(this.querySelectorAll("crowd-button, button, input"),
          function (el) {
            if (isSubmitControl(el)) {
              el.setAttribute("disabled", "");
            }
          });
      }
    }

    get assignmentId() {
      return params.get("assignmentId") || "";
    }

    taskAnswers() {
      return encode(entriesOf(this));
    }

    _missing() {
      var missing = [];
      fieldsOf(this).forEach(function (el) {
        if (el.hasAttribute("disabled")) {
          return;
        }
        var tag = el.localName;
        var bad = false;
        if (TEXT.indexOf(tag) >= 0) {
          bad = el.hasAttribute("required") && !el.value;
        } else if (tag === "crowd-checkbox") {
          bad = el.hasAttribute("required") && !el.checked;
        } else if (CLASSIFIERS.indexOf(tag) >= 0) {
          bad = !el.value;
        } else if (tag === "input" || tag === "textarea" || tag === "select") {
          bad = !el.checkValidity();
        }
        el.classList.toggle("crowd-invalid", bad);
        if (bad) {
          missing.push(el);
        }
      });
      Array.prototype.forEach.call(this.querySelectorAll("crowd-radio-group"), function (g) {
        var buttons = g.querySelectorAll("crowd-radio-button");
        var required = Array.prototype.some.call(buttons, function (b) {
          return b.hasAttribute("required");
        }) || g.hasAttribute("required");
        var chosen = Array.prototype.some.call(buttons, function (b) {
          return b.checked;
        });
        if (required && !chosen) {
          missing.push(g);
        }
      });
      return missing;
    }

    submit() {
      var missing = this._missing();
      if (missing.length) {
        if (this._message) { // not yet there when a page script submits before the page loaded
          this._message.textContent = "Please answer every required question before submitting.";
        }
        if (missing[0].reportValidity && missing[0].localName === "input") {
          missing[0].reportValidity();
        } else if (missing[0].scrollIntoView) {
          missing[0].scrollIntoView({ block: "center" });
        }
        return false;
      }
      if (this._message) {
        this._message.textContent = "";
      }
      // Handlers (onsubmit, addEventListener("submit")) run first and may fill hidden fields.
      if (!this.dispatchEvent(new Event("submit", { cancelable: true }))) {
        return false;
      }
      var post = make("form", { method: "post", action: submitBase() + "/mturk/externalSubmit" });
      post.style.display = "none";
      [["assignmentId", this.assignmentId], ["taskAnswers", this.taskAnswers()]].forEach(
        function (pair) {
          var input = make("input", { type: "hidden", name: pair[0] });
          input.value = pair[1];
          post.appendChild(input);
        }
      );
      document.body.appendChild(post);
      HTMLFormElement.prototype.submit.call(post);
      return true;
    }
  }

  /* --- crowd-button ---------------------------------------------------------------------- */

  class CrowdButton extends HTMLElement {
    connectedCallback() {
      if (this._ready) {
        return;
      }
      this._ready = true;
      var self = this;
      whenParsed(function () {
        var button = make("button", { type: "button", class: "crowd-button" });
        moveChildren(self, button);
        if (self.hasAttribute("disabled")) {
          button.disabled = true;
        }
        self.appendChild(button);
        self._button = button;
      });
    }

    static get observedAttributes() {
      return ["disabled"];
    }

    attributeChangedCallback() {
      if (this._button) {
        this._button.disabled = this.hasAttribute("disabled");
      }
    }
  }

  /* --- crowd-input, crowd-text-area ------------------------------------------------------- */

  class CrowdTextField extends HTMLElement {
    connectedCallback() {
      if (this._ready) {
        return;
      }
      this._ready = true;
      var self = this;
      var area = this.localName === "crowd-text-area";
      var field = make(area ? "textarea" : "input", { class: "crowd-field" });
      if (!area) {
        field.type = this.getAttribute("type") || "text";
      } else if (this.getAttribute("rows")) {
        field.rows = Number(this.getAttribute("rows"));
      }
      ["placeholder", "min", "max", "step"].forEach(function (a) {
        if (self.hasAttribute(a)) {
          field.setAttribute(a, self.getAttribute(a));
        }
      });
      if (this.getAttribute("max-length")) {
        field.maxLength = Number(this.getAttribute("max-length"));
      }
      field.value = this.getAttribute("value") || "";
      field.disabled = this.hasAttribute("disabled");
      this._field = field;
      whenParsed(function () {
        var label = make("label", {});
        if (self.getAttribute("label")) {
          label.appendChild(make("span", { class: "crowd-label" }, self.getAttribute("label")));
        }
        label.appendChild(field);
        self.appendChild(label);
        if (self.hasAttribute("auto-focus")) {
          field.focus();
        }
      });
      field.addEventListener("input", function () {
        self.classList.remove("crowd-invalid");
      });
    }

    get value() {
      return this._field ? this._field.value : this.getAttribute("value") || "";
    }

    set value(v) {
      if (this._field) {
        this._field.value = v;
      } else {
        this.setAttribute("value", v);
      }
    }

    get name() {
      return this.getAttribute("name") || "";
    }
  }

  /* --- crowd-checkbox, crowd-radio-button, crowd-radio-group ------------------------------ */

  class CrowdToggle extends HTMLElement {
    connectedCallback() {
      if (this._ready) {
        return;
      }
      this._ready = true;
      var self = this;
      var radio = this.localName === "crowd-radio-button";
      var box = make("input", { type: radio ? "radio" : "checkbox" });
      box.checked = this.hasAttribute("checked");
      box.disabled = this.hasAttribute("disabled");
      this._box = box;
      whenParsed(function () {
        if (radio) {
          var group = self.closest("crowd-radio-group");
          if (group) {
            group._radioName = group._radioName || uid("radio_group");
            box.name = group._radioName;
          } else {
            box.name = "__crowd_radio_" + self.getAttribute("name");
          }
        }
        var label = make("label", {});
        label.appendChild(box);
        moveChildren(self, label);
        self.appendChild(label);
      });
      box.addEventListener("change", function () {
        self.classList.remove("crowd-invalid");
        var group = self.closest("crowd-radio-group");
        if (group) {
          group.classList.remove("crowd-invalid");
        }
      });
    }

    get checked() {
      return this._box ? this._box.checked : this.hasAttribute("checked");
    }

    set checked(v) {
      if (this._box) {
        this._box.checked = !!v;
      }
    }

    get value() {
      return this.getAttribute("value") || "on";
    }

    get name() {
      return this.getAttribute("name") || "";
    }
  }

  class CrowdRadioGroup extends HTMLElement {
    connectedCallback() {
      this.setAttribute("role", "radiogroup");
    }
  }

  /* --- crowd-classifier, crowd-image-classifier ------------------------------------------- */

  class CrowdClassifier extends HTMLElement {
    connectedCallback() {
      if (this._ready) {
        return;
      }
      this._ready = true;
      var self = this;
      whenParsed(function () {
        self._render();
      });
    }

    _render() {
      var self = this;
      var parts = {};
      ["classification-target", "short-instructions", "full-instructions"].forEach(function (t) {
        parts[t] = self.querySelector(t);
        if (parts[t]) {
          parts[t].remove();
        }
      });
      this.textContent = "";
      if (this.getAttribute("header")) {
        this.appendChild(make("div", { class: "crowd-classifier-header" },
          this.getAttribute("header")));
      }
      if (this.localName === "crowd-image-classifier" && this.getAttribute("src")) {
        this.appendChild(make("img", { class: "crowd-image", src: this.getAttribute("src"),
          alt: "" }));
      }
      if (parts["classification-target"]) {
        this.appendChild(parts["classification-target"]);
      }
      var choices = make("div", { class: "crowd-choices", role: "radiogroup" });
      var group = uid("classifier");
      this._choices = [];
      categories(this.getAttribute("categories")).forEach(function (category) {
        var label = make("label", {});
        var box = make("input", { type: "radio", name: group });
        box.value = category;
        box.addEventListener("change", function () {
          self.classList.remove("crowd-invalid");
        });
        label.appendChild(box);
        label.appendChild(document.createTextNode(" " + category));
        choices.appendChild(label);
        self._choices.push(box);
      });
      choices.classList.add("crowd-choices");
      this.appendChild(choices);
      if (parts["short-instructions"]) {
        this.appendChild(parts["short-instructions"]);
      }
      if (parts["full-instructions"]) {
        var details = make("details", {});
        details.appendChild(make("summary", {},
          parts["full-instructions"].getAttribute("header") || "View full instructions"));
        moveChildren(parts["full-instructions"], details);
        parts["full-instructions"].appendChild(details);
        this.appendChild(parts["full-instructions"]);
      }
    }

    get value() {
      var chosen = (this._choices || []).filter(function (b) {
        return b.checked;
      });
      return chosen.length ? chosen[0].value : "";
    }

    get name() {
      return this.getAttribute("name") || "";
    }
  }

  /* --- crowd-instructions, crowd-alert ---------------------------------------------------- */

  class CrowdInstructions extends HTMLElement {
    connectedCallback() {
      if (this._ready) {
        return;
      }
      this._ready = true;
      var self = this;
      whenParsed(function () {
        var details = make("details", {});
        details.appendChild(make("summary", {}, self.getAttribute("link-text") || "Instructions"));
        var titles = {
          "short-summary": "Summary",
          "detailed-instructions": "Instructions",
          "positive-example": "Good example",
          "negative-example": "Bad example",
        };
        Array.prototype.slice.call(self.childNodes).forEach(function (child) {
          if (child.localName && titles[child.localName]) {
            details.appendChild(make("h4", {}, titles[child.localName]));
          }
          details.appendChild(child);
        });
        self.appendChild(details);
      });
    }
  }

  class CrowdAlert extends HTMLElement {
    connectedCallback() {
      if (this._ready) {
        return;
      }
      this._ready = true;
      var self = this;
      this.setAttribute("role", "alert");
      whenParsed(function () {
        if (self.hasAttribute("dismissible")) {
          var close = make("button", { type: "button", class: "crowd-dismiss",
            "aria-label": "Dismiss" }, "\u00d7");
          close.addEventListener("click", function () {
            self.remove();
          });
          self.insertBefore(close, self.firstChild);
        }
      });
    }
  }

  customElements.define("crowd-form", CrowdForm);
  customElements.define("crowd-button", CrowdButton);
  customElements.define("crowd-input", class extends CrowdTextField {});
  customElements.define("crowd-text-area", class extends CrowdTextField {});
  customElements.define("crowd-checkbox", class extends CrowdToggle {});
  customElements.define("crowd-radio-button", class extends CrowdToggle {});
  customElements.define("crowd-radio-group", CrowdRadioGroup);
  customElements.define("crowd-classifier", class extends CrowdClassifier {});
  customElements.define("crowd-image-classifier", class extends CrowdClassifier {});
  customElements.define("crowd-instructions", CrowdInstructions);
  customElements.define("crowd-alert", CrowdAlert);

  window.crowdTaskAnswers = function () {
    var form = document.querySelector("crowd-form");
    return form ? form.taskAnswers() : null;
  };
})();
