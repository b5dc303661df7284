// The try-it page: record (MediaRecorder) or pick a file, POST the bytes to /intent as a raw body,
// and show the answer. No build step and no external scripts: the service ships this file.
"use strict";

const $ = (id) => document.getElementById(id);
let recorder = null;
let chunks = [];

function show(id, text) {
  $(id).textContent = text;
}

function slotText(slots) {
  return Object.entries(slots || {}).map(([name, value]) => `${name}: ${value}`).join(", ");
}

function showAnswer(answer) {
  $("error").hidden = true;
  // Not understood: the clip is none of the model's commands; top_k still shows its best guesses.
  show("intent", answer.understood ? answer.intent : "Not a command I know");
  $("intent").className = answer.understood ? "" : "refused";
  show("confidence", `(${(100 * answer.confidence).toFixed(1)}%)`);
  const slots = Object.entries(answer.slots || {});
  show("slots", `Slots: ${slotText(answer.slots)}`);
  $("slots").hidden = slots.length === 0;
  const top = $("top");
  top.replaceChildren(...answer.top_k.map((k) => {
    const li = document.createElement("li");
    const kSlots = Object.keys(k.slots || {}).length ? ` (${slotText(k.slots)})` : "";
    li.textContent = `${k.intent}${kSlots}: ${(100 * k.confidence).toFixed(1)}%`;
    return li;
  }));
  const t = answer.timing_ms;
  show("timings", `${answer.audio_seconds.toFixed(2)} s of audio; decode ${t.decode.toFixed(1)} ms, ` +
       `features ${t.features.toFixed(1)} ms, inference ${t.inference.toFixed(1)} ms, total ${t.total.toFixed(1)} ms`);
  show("model", `model ${answer.model.name} (${answer.model.bits}-bit, ${(answer.model.file_bytes / 1e6).toFixed(2)} MB)`);
  $("result").hidden = false;
}

function showError(text) {
  $("result").hidden = true;
  show("error", text);
  $("error").hidden = false;
}

async function classify(body, type) {
  show("status", "Sending…");
  try {
    const response = await fetch("intent?top_k=3", {
      // The service takes audio/* or application/octet-stream as a raw body (a file may say video/webm).
      method: "POST", body, headers: { "Content-Type": type && type.startsWith("audio/") ? type : "application/octet-stream" },
    });
    const answer = await response.json();
    if (response.ok) {
      showAnswer(answer);
      show("status", "Done.");
    } else {
      showError(`${answer.title}: ${answer.detail}`);  // problem+json
      show("status", `The service answered ${response.status}.`);
    }
  } catch (e) {
    showError(`No answer from the service: ${e}`);
    show("status", "Failed.");
  }
}

$("record").addEventListener("click", async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"].find(
      (t) => window.MediaRecorder && MediaRecorder.isTypeSupported(t));
    recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
    chunks = [];
    recorder.ondataavailable = (event) => chunks.push(event.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((track) => track.stop());
      const blob = new Blob(chunks, { type: recorder.mimeType });
      classify(blob, blob.type.split(";")[0]);
    };
    recorder.start();
    $("record").disabled = true;
    $("stop").disabled = false;
    show("status", "Recording… press Stop when you are done.");
  } catch (e) {
    showError(`The microphone is not available: ${e.message || e}`);
  }
});

$("stop").addEventListener("click", () => {
  if (recorder && recorder.state === "recording") recorder.stop();
  $("record").disabled = false;
  $("stop").disabled = true;
});

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) classify(file, file.type);
});
