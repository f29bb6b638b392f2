// The pose editor's browser side: draws the OpenPose JSON held in props.value on a canvas, lets joints be
// dragged (shift-drag moves a whole person), people added and removed, and the pose downloaded. The JSON goes
// back to the server only when a drag ends or a button is pressed; every move is drawn here.
const canvas = element.querySelector("canvas");
const context = canvas.getContext("2d");
const status = element.querySelector(".pose-status");
const note = element.querySelector(".pose-note");

// the OpenPose body convention the pose controls were trained on: 18 COCO points, 17 limbs, one colour each
const LIMBS = [[1, 2], [1, 5], [2, 3], [3, 4], [5, 6], [6, 7], [1, 8], [8, 9], [9, 10], [1, 11], [11, 12],
               [12, 13], [1, 0], [0, 14], [14, 16], [0, 15], [15, 17]];
const COLOURS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
                 [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
                 [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]];
const HAND_EDGES = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10], [10, 11],
                    [11, 12], [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20]];
const PARTS = ["pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"];
// a person standing, facing the viewer, in canvas fractions (x, y) of the 18 points
const STANDING = [[0.5, 0.2], [0.5, 0.3], [0.42, 0.3], [0.38, 0.42], [0.36, 0.54], [0.58, 0.3], [0.62, 0.42],
                  [0.64, 0.54], [0.45, 0.55], [0.45, 0.7], [0.45, 0.85], [0.55, 0.55], [0.55, 0.7],
                  [0.55, 0.85], [0.48, 0.18], [0.52, 0.18], [0.46, 0.19], [0.54, 0.19]];
const PICK_RADIUS = 12;  // screen pixels around a joint that grab it
// the drawing buffer's shorter side at least: a pose detected or generated at 128 pixels is shown scaled
// to the column, and drawn at 128 it would be a blur
const MIN_BUFFER = 512;

let frame = null;
let selected = -1;  // the person last touched: "Remove person" removes them
let drag = null;  // {person, part, index} or {person, whole: true, start: the person then}, and where it began

function parse(text) {
  try {
    const data = JSON.parse(text || "");
    if (data && Array.isArray(data.people)) {
      data.canvas_width = data.canvas_width || 512;
      data.canvas_height = data.canvas_height || 512;
      return data;
    }
  } catch (error) { /* not JSON yet: an empty canvas */ }
  return {canvas_width: 512, canvas_height: 512, people: []};
}

function points(person, part) {
  const values = person[part] || [];
  const out = [];
  for (let i = 0; i + 2 < values.length; i += 3) out.push(values[i + 2] > 0 ? [values[i], values[i + 1]] : null);
  return out;
}

function line(a, b, colour, width) {
  context.strokeStyle = colour;
  context.lineWidth = width;
  context.beginPath();
  context.moveTo(a[0], a[1]);
  context.lineTo(b[0], b[1]);
  context.stroke();
}

function dot(p, colour, radius) {
  context.fillStyle = colour;
  context.beginPath();
  context.arc(p[0], p[1], radius, 0, 2 * Math.PI);
  context.fill();
}

function draw() {
  const zoom = Math.max(1, MIN_BUFFER / Math.min(frame.canvas_width, frame.canvas_height));
  canvas.width = Math.round(frame.canvas_width * zoom);
  canvas.height = Math.round(frame.canvas_height * zoom);
  context.setTransform(zoom, 0, 0, zoom, 0, 0);  // draw in the pose's own pixels
  context.fillStyle = "black";
  context.fillRect(0, 0, frame.canvas_width, frame.canvas_height);
  const size = Math.max(2, Math.round(Math.min(canvas.width, canvas.height) / 128)) / zoom;
  frame.people.forEach((person, p) => {
    const body = points(person, PARTS[0]);
    LIMBS.forEach(([a, b], i) => {
      if (body[a] && body[b]) line(body[a], body[b], `rgba(${COLOURS[i].join(",")},0.6)`, 2 * size);
    });
    body.forEach((point, i) => point && dot(point, `rgb(${COLOURS[i].join(",")})`, size + (p === selected ? 2 : 1)));
    for (const part of PARTS.slice(1, 3)) {
      const hand = points(person, part);
      HAND_EDGES.forEach(([a, b]) => hand[a] && hand[b] && line(hand[a], hand[b], "rgb(0,128,255)", 1));
      hand.forEach((point) => point && dot(point, "rgb(0,0,255)", size / 2 + 1));
    }
    points(person, PARTS[3]).forEach((point) => point && dot(point, "white", size / 2));
  });
  status.textContent = `${frame.people.length} ${frame.people.length === 1 ? "person" : "people"}, ` +
    `${frame.canvas_width}x${frame.canvas_height}`;
  note.textContent = frame.note || "";  // which detector found the pose
}

function save() {
  props.value = JSON.stringify(frame);
  trigger("change");
}

function canvasPoint(event) {
  const box = canvas.getBoundingClientRect();
  const scale = frame.canvas_width / box.width;
  return [(event.clientX - box.left) * scale, (event.clientY - box.top) * scale, scale];
}

// [the smallest, the largest] of a person's x (axis 0) or y (axis 1) over all its points; null if it has none
function extent(person, axis) {
  const values = PARTS.flatMap((part) => points(person, part)).filter(Boolean).map((point) => point[axis]);
  return values.length ? [Math.min(...values), Math.max(...values)] : null;
}

// the horizontal shift of STANDING that overlaps the people already there least, nearest the middle first
function freeShift() {
  const width = frame.canvas_width;
  const xs = STANDING.map(([x]) => x * width);
  const left = Math.min(...xs), right = Math.max(...xs), gap = 0.02 * width;
  const taken = frame.people.map((person) => extent(person, 0)).filter(Boolean);
  const overlap = (shift) => taken.reduce((sum, [a, b]) =>
    sum + Math.max(0, Math.min(b, right + shift + gap) - Math.max(a, left + shift - gap)), 0);
  let best = 0, least = overlap(0);
  for (let d = width / 50; least > 0 && (left - d >= 0 || right + d < width); d += width / 50) {
    for (const shift of [d, -d]) {
      if (left + shift < 0 || right + shift >= width) continue;
      const covered = overlap(shift);
      if (covered < least) [best, least] = [shift, covered];
    }
  }
  return best;
}

// how far a move of `wanted` along one axis may go while every point of a person spanning `span` stays on a
// canvas of `size`: never further out than it already is
function allowed(wanted, span, size) {
  if (!span) return wanted;
  return Math.min(Math.max(wanted, Math.min(0, -span[0])), Math.max(0, size - 1 - span[1]));
}

function nearest(x, y, radius) {
  let best = null;
  frame.people.forEach((person, p) => PARTS.forEach((part) => points(person, part).forEach((point, i) => {
    if (!point) return;
    const distance = Math.hypot(point[0] - x, point[1] - y);
    if (distance <= radius && (!best || distance < best.distance)) best = {person: p, part, index: i, distance};
  })));
  return best;
}

canvas.addEventListener("pointerdown", (event) => {
  const [x, y, scale] = canvasPoint(event);
  const hit = nearest(x, y, PICK_RADIUS * scale);
  if (!hit) return;
  selected = hit.person;
  const person = frame.people[hit.person];
  drag = event.shiftKey ? {person: hit.person, whole: true, x, y, start: JSON.parse(JSON.stringify(person))}
                        : {...hit, x, y};
  canvas.setPointerCapture(event.pointerId);
  draw();
});

canvas.addEventListener("pointermove", (event) => {
  if (!drag) return;
  const [x, y] = canvasPoint(event);
  const person = frame.people[drag.person];
  const clamp = (v, size) => Math.min(Math.max(v, 0), size - 1);
  if (drag.whole) {  // the person moves as one, from where it was when the drag began, and stops at the edges
    const dx = allowed(x - drag.x, extent(drag.start, 0), frame.canvas_width);
    const dy = allowed(y - drag.y, extent(drag.start, 1), frame.canvas_height);
    for (const part of PARTS) {
      const from = drag.start[part] || [], values = person[part] || [];
      for (let i = 0; i + 2 < values.length; i += 3) {
        if (values[i + 2] <= 0) continue;
        values[i] = from[i] + dx;
        values[i + 1] = from[i + 1] + dy;
      }
    }
  } else {
    person[drag.part][3 * drag.index] = clamp(x, frame.canvas_width);
    person[drag.part][3 * drag.index + 1] = clamp(y, frame.canvas_height);
  }
  draw();
});

canvas.addEventListener("pointerup", () => {
  if (!drag) return;
  drag = null;
  save();
});

element.querySelector(".pose-add").addEventListener("click", () => {
  const shift = freeShift();
  const body = STANDING.flatMap(([x, y]) => [x * frame.canvas_width + shift, y * frame.canvas_height, 1]);
  frame.people.push({pose_keypoints_2d: body});
  selected = frame.people.length - 1;
  draw();
  save();
});

element.querySelector(".pose-remove").addEventListener("click", () => {
  if (!frame.people.length) return;
  frame.people.splice(selected >= 0 && selected < frame.people.length ? selected : frame.people.length - 1, 1);
  selected = -1;
  draw();
  save();
});

element.querySelector(".pose-download").addEventListener("click", () => {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(frame)], {type: "application/json"}));
  link.download = "pose.json";
  link.click();
  URL.revokeObjectURL(link.href);
});

function load() {
  frame = parse(props.value);
  selected = -1;
  draw();
}

watch("value", () => {
  if (JSON.stringify(frame) !== props.value) load();
});
load();
