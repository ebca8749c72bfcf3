/* textgen serve's page: picks a served run from /v1/models, posts a streaming
 * /v1/completions request and shows the text as its server-sent events arrive.
 *
 * Why fetch() and not EventSource: EventSource can only GET, and a completion is a POST
 * with a JSON body. So the response body is read with a ReadableStream reader and parsed
 * here as server-sent events; bytes are decoded with one TextDecoder in stream mode, so a
 * Hangul syllable (3 UTF-8 bytes) split across two network chunks is still one syllable.
 * Stop aborts the request with an AbortController: the browser closes the connection and
 * the server frees the request's slot.
 *
 * Everything is relative to the page's own address (no other host, no CDN), so the page
 * works offline and behind a path prefix.
 */
"use strict";

(function () {
  const KEY_STORE = "textgen.apiKey";
  const MODEL_STORE = "textgen.model";

  /**
   * A server-sent-events parser over byte chunks (the WHATWG event-stream rules): lines end
   * with CRLF, LF or CR (a CR at a chunk's end waits for a possible LF), "data:" lines are
   * joined with LF, a blank line dispatches, ":" lines are comments (keep-alive pings).
   * onEvent receives {event, data}.
   */
  function createSSEParser(onEvent) {
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    let dataLines = [];
    let eventName = "";
    let started = false;

    function dispatch() {
      if (dataLines.length > 0) {
        onEvent({ event: eventName || "message", data: dataLines.join("\n") });
      }
      dataLines = [];
      eventName = "";
    }

    function processLine(line) {
      if (line === "") {
        dispatch();
        return;
      }
      if (line[0] === ":") return;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") dataLines.push(value);
      else if (field === "event") eventName = value;
    }

    function drain(final) {
      for (;;) {
        const cr = buffer.indexOf("\r");
        const lf = buffer.indexOf("\n");
        let end = cr < 0 ? lf : lf < 0 ? cr : Math.min(cr, lf);
        if (end < 0) break;
        let next = end + 1;
        if (buffer[end] === "\r") {
          if (end + 1 === buffer.length && !final) break; // its LF may be in the next chunk
          if (buffer[end + 1] === "\n") next = end + 2;
        }
        processLine(buffer.slice(0, end));
        buffer = buffer.slice(next);
      }
    }

    return {
      push(bytes) {
        let text = decoder.decode(bytes, { stream: true });
        if (!started && text.length > 0) {
          started = true;
          if (text[0] === "\ufeff") text = text.slice(1);
        }
        buffer += text;
        drain(false);
      },
      end() {
        buffer += decoder.decode();
        drain(true);
        if (buffer !== "") processLine(buffer);
        buffer = "";
        dispatch(); // a last event without its blank line is still shown
      },
    };
  }

  /** The error message of a failed response: the server's {"error": {"message"}}. */
  async function errorMessage(response) {
    let text = "";
    try {
      text = await response.text();
    } catch (_err) {
      /* the body could not be read: the status alone */
    }
    let message = "";
    try {
      const body = JSON.parse(text);
      const err = body && body.error;
      if (err && typeof err === "object") {
        message = err.message || "";
        if (err.param && !message.includes(err.param)) message += ` (${err.param})`;
      } else if (typeof err === "string") {
        message = err;
      } else if (body && typeof body.detail === "string") {
        message = body.detail;
      }
    } catch (_err) {
      message = text.trim().slice(0, 500);
    }
    const status = `${response.status} ${response.statusText || ""}`.trim();
    return message ? `${status}: ${message}` : status;
  }

  function $(id) {
    return document.getElementById(id);
  }

  const els = {};
  let controller = null;

  function apiHeaders(json) {
    const headers = {};
    if (json) headers["Content-Type"] = "application/json";
    const key = els.apiKey.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.textContent = "";
    els.error.hidden = true;
  }

  function setState(state, statusText) {
    els.output.dataset.state = state;
    els.output.setAttribute("aria-busy", state === "streaming" ? "true" : "false");
    if (statusText !== undefined) els.status.textContent = statusText;
    const busy = state === "streaming";
    els.generate.disabled = busy;
    els.stop.disabled = !busy;
  }

  function showStrategyFields() {
    const strategy = els.strategy.value;
    for (const field of document.querySelectorAll(".field[data-for]")) {
      const on = field.dataset.for === strategy;
      field.hidden = !on;
      for (const input of field.querySelectorAll("input, select")) input.disabled = !on;
    }
  }

  function describeModel(model) {
    const parts = [];
    if (model.level) parts.push(`${model.level} level`);
    if (model.vocab_size) parts.push(`vocabulary ${Number(model.vocab_size).toLocaleString()}`);
    if (model.parameters) parts.push(`${Number(model.parameters).toLocaleString()} parameters`);
    return parts.join(" · ");
  }

  let modelsById = new Map();
  const MAX_LOAD_ATTEMPTS = 300; // about five minutes of 503s before the page gives up
  let loadAttempts = 0;
  let loadTimer = 0;

  async function loadModels() {
    const select = els.model;
    let response;
    try {
      response = await fetch("v1/models", { headers: apiHeaders(false), cache: "no-store" });
    } catch (err) {
      showError(`Cannot reach the server: ${err.message}`);
      return;
    }
    if (!response.ok) {
      const message = await errorMessage(response);
      if (response.status === 503 && loadAttempts < MAX_LOAD_ATTEMPTS) {
        select.replaceChildren(new Option("loading…", ""));
        // the models are still loading (or the server is busy): ask again when it says
        const wait = Math.min(Math.max(Number(response.headers.get("Retry-After")) || 1, 1), 10);
        loadAttempts += 1;
        showError(`${message}. Trying again in ${wait} s…`);
        clearTimeout(loadTimer);
        loadTimer = setTimeout(loadModels, wait * 1000);
        return;
      }
      select.replaceChildren(new Option("(none)", ""));
      showError(`Listing the models failed: ${message}`);
      return;
    }
    loadAttempts = 0;
    let models = [];
    try {
      const body = await response.json();
      models = Array.isArray(body.data) ? body.data : [];
    } catch (err) {
      showError(`Listing the models failed: the answer is not JSON (${err.message})`);
      return;
    }
    modelsById = new Map(models.map((m) => [String(m.id), m]));
    if (models.length === 0) {
      select.replaceChildren(new Option("(no model served)", ""));
      return;
    }
    let wanted = select.value;
    try {
      wanted = wanted || localStorage.getItem(MODEL_STORE);
    } catch (_err) {
      /* storage disabled */
    }
    select.replaceChildren(...models.map((m) => new Option(String(m.id), String(m.id))));
    if (wanted && modelsById.has(wanted)) select.value = wanted;
    clearError();
    showModelInfo();
  }

  function showModelInfo() {
    const model = modelsById.get(els.model.value);
    els.modelInfo.textContent = model ? describeModel(model) : "";
  }

  /** An error about one field of the form, which gets the focus. */
  function fieldError(input, message) {
    const err = new Error(message);
    err.field = input;
    return err;
  }

  function intField(input, name) {
    const value = Number(input.value);
    if (input.value.trim() === "" || !Number.isInteger(value)) {
      throw fieldError(input, `${name} must be a whole number`);
    }
    return value;
  }

  function numberField(input, name) {
    const value = Number(input.value);
    if (input.value.trim() === "" || !Number.isFinite(value)) {
      throw fieldError(input, `${name} must be a number`);
    }
    return value;
  }

  /** The request body; only the fields of the chosen strategy are sent. */
  function requestBody() {
    const strategy = els.strategy.value;
    const body = {
      model: els.model.value,
      prompt: els.seed.value,
      max_tokens: intField(els.maxTokens, "Length"),
      strategy,
      stream: true,
      stream_options: { include_usage: true }, // the token count, beam search's too
    };
    if (strategy === "sample") {
      body.temperature = numberField(els.temperature, "Temperature");
      body.top_k = intField(els.topK, "Top-k");
      body.top_p = numberField(els.topP, "Top-p");
      if (els.rngSeed.value.trim() !== "") body.seed = intField(els.rngSeed, "Random seed");
    } else if (strategy === "beam") {
      body.beam_width = intField(els.beamWidth, "Beam width");
    }
    return body;
  }

  /** The text and end reason of one completion chunk (completions or chat shape). */
  function chunkText(chunk) {
    const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : undefined;
    if (!choice) return { text: "", finish: null };
    let text = "";
    if (typeof choice.text === "string") text = choice.text;
    else if (choice.delta && typeof choice.delta.content === "string") text = choice.delta.content;
    return { text, finish: choice.finish_reason || null };
  }

  async function generate() {
    if (controller) return;
    clearError();
    let body;
    try {
      if (!els.model.value) {
        throw fieldError(els.model, "No model to use yet: the server has listed none");
      }
      if (els.seed.value.trim() === "") throw fieldError(els.seed, "Type a seed text first");
      body = requestBody();
    } catch (err) {
      showError(err.message);
      (err.field || els.seed).focus();
      return;
    }
    try {
      localStorage.setItem(MODEL_STORE, body.model);
    } catch (_err) {
      /* storage disabled */
    }
    els.seedEcho.textContent = body.prompt;
    els.completion.textContent = "";
    els.output.dataset.chunks = "0";
    controller = new AbortController();
    setState("streaming", "Generating…");

    let chunks = 0;
    let tokens = null; // from the usage chunk; until then one chunk is one token
    let finish = null;
    let failed = false;
    let done = false;
    const started = performance.now();

    const append = (text) => {
      els.completion.append(text);
      chunks += 1;
      els.output.dataset.chunks = String(chunks);
    };

    const parser = createSSEParser(({ event, data }) => {
      if (done) return;
      if (data.trim() === "[DONE]") {
        done = true;
        return;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch (_err) {
        failed = true;
        showError(`The server sent an event that is not JSON: ${data.slice(0, 200)}`);
        return;
      }
      if (event === "error" || (chunk && chunk.error)) {
        failed = true;
        const err = chunk && chunk.error;
        showError(typeof err === "object" && err ? err.message || JSON.stringify(err) : data);
        return;
      }
      if (chunk && chunk.usage && Number.isInteger(chunk.usage.completion_tokens)) {
        tokens = chunk.usage.completion_tokens;
      }
      const part = chunkText(chunk);
      if (part.text) append(part.text);
      if (part.finish) finish = part.finish;
    });

    try {
      const response = await fetch("v1/completions", {
        method: "POST",
        headers: apiHeaders(true),
        body: JSON.stringify(body),
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) {
        failed = true;
        showError(await errorMessage(response));
      } else if (!(response.headers.get("Content-Type") || "").includes("text/event-stream")) {
        const result = await response.json(); // a server that did not stream: one answer
        if (result.error) {
          failed = true;
          showError(result.error.message || JSON.stringify(result.error));
        } else {
          const part = chunkText(result);
          append(part.text);
          finish = part.finish;
          if (result.usage && Number.isInteger(result.usage.completion_tokens)) {
            tokens = result.usage.completion_tokens;
          }
        }
      } else {
        const reader = response.body.getReader();
        for (;;) {
          const { value, done: ended } = await reader.read();
          if (ended) break;
          parser.push(value);
          if (done) {
            reader.cancel().catch(() => {});
            break;
          }
        }
        if (!done) parser.end();
        if (!done && !failed) {
          failed = true;
          showError("The stream ended before the server said it was done ([DONE] missing).");
        }
      }
    } catch (err) {
      if (err.name === "AbortError") {
        controller = null;
        setState("stopped", `Stopped after ${chunks} token${chunks === 1 ? "" : "s"}.`);
        return;
      }
      failed = true;
      showError(`The request failed: ${err.message}`);
    }
    controller = null;
    if (failed) {
      setState("error", "Failed.");
      return;
    }
    const seconds = (performance.now() - started) / 1000;
    const why = finish === "stop" ? "end of text" : finish === "length" ? "length reached" : finish;
    const count = tokens === null ? chunks : tokens;
    setState(
      "done",
      `Done: ${count} token${count === 1 ? "" : "s"} in ${seconds.toFixed(2)} s` +
        (why ? ` (${why}).` : "."),
    );
  }

  function stop() {
    if (controller) controller.abort();
  }

  function init() {
    Object.assign(els, {
      form: $("gen-form"),
      model: $("model"),
      modelInfo: $("model-info"),
      seed: $("seed"),
      maxTokens: $("max-tokens"),
      strategy: $("strategy"),
      temperature: $("temperature"),
      topK: $("top-k"),
      topP: $("top-p"),
      rngSeed: $("rng-seed"),
      beamWidth: $("beam-width"),
      apiKey: $("api-key"),
      keyBox: $("key-box"),
      generate: $("generate"),
      stop: $("stop"),
      error: $("error"),
      output: $("output"),
      seedEcho: $("seed-echo"),
      completion: $("completion"),
      status: $("status"),
    });
    let storedKey = "";
    try {
      storedKey = localStorage.getItem(KEY_STORE) || "";
    } catch (_err) {
      /* storage disabled: the key is simply not remembered */
    }
    if (storedKey) {
      els.apiKey.value = storedKey;
      els.keyBox.open = true;
    }
    els.apiKey.addEventListener("change", () => {
      const key = els.apiKey.value.trim();
      try {
        if (key) localStorage.setItem(KEY_STORE, key);
        else localStorage.removeItem(KEY_STORE);
      } catch (_err) {
        /* storage disabled */
      }
      loadAttempts = 0;
      loadModels();
    });
    els.strategy.addEventListener("change", showStrategyFields);
    els.model.addEventListener("change", showModelInfo);
    els.form.addEventListener("submit", (event) => {
      event.preventDefault();
      generate();
    });
    els.stop.addEventListener("click", stop);
    els.seed.addEventListener("keydown", (event) => {
      if (event.isComposing) return; // a Hangul syllable being composed by the IME
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        generate();
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !event.isComposing) stop();
    });
    showStrategyFields();
    setState("idle", "");
    loadModels();
  }

  // For tests and the curious: the parser is a plain function of bytes.
  window.textgenPage = { createSSEParser, requestBody, generate, stop, loadModels };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
