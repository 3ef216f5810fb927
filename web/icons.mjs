// Draws the app's icons (public/icon-*.png) once; the PNGs are committed, so the build only
// copies them. A speech bubble on the accent colour; the maskable one keeps it in the safe zone.

import { writeFileSync } from "node:fs";
import { deflateSync } from "node:zlib";

const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc = (bytes) => {
  let c = 0xffffffff;
  for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
};
const chunk = (type, data) => {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, "ascii");
  data.copy(out, 8);
  out.writeUInt32BE(crc(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
};

function icon(size, padding, rounded) {
  const rows = [];
  const r = size * 0.22;
  for (let y = 0; y < size; y += 1) {
    const row = Buffer.alloc(1 + size * 4);
    for (let x = 0; x < size; x += 1) {
      let inside = true;
      if (rounded) {
        const cx = Math.min(Math.max(x, r), size - r);
        const cy = Math.min(Math.max(y, r), size - r);
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r;
      }
      // The bubble: an ellipse with a tail at its lower left.
      const u = (x - size / 2) / (size * (0.5 - padding) * 0.85);
      const v = (y - size * 0.46) / (size * (0.5 - padding) * 0.62);
      const tx = (x - size * (padding + 0.2)) / size;
      const ty = (y - size * (0.72 - padding * 0.4)) / size;
      const tail = tx > -0.06 && tx < 0.12 && ty > 0 && ty < 0.16 - tx * 0.6 && ty < 0.14;
      const bubble = u * u + v * v <= 1 || tail;
      const [red, green, blue] = bubble ? [255, 255, 255] : [47, 111, 222];
      row.set([red, green, blue, inside ? 255 : 0], 1 + x * 4);
    }
    rows.push(row);
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header.set([8, 6, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(Buffer.concat(rows), { level: 9 })),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

writeFileSync("public/icon-192.png", icon(192, 0.12, true));
writeFileSync("public/icon-512.png", icon(512, 0.12, true));
writeFileSync("public/icon-maskable-512.png", icon(512, 0.22, false));
