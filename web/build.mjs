// Builds the web app into src/beseda/web/static/ (or --out DIR): the same sources give the
// same bytes, and asset names carry a hash of their content, so browsers may cache them for
// ever. --tests bundles the unit tests into .test-build/ for `node --test`.

import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const common = {
  absWorkingDir: here,
  bundle: true,
  write: false,
  logLevel: "warning",
  charset: "utf8",
  legalComments: "none",
};

if (args.includes("--tests")) {
  const out = join(here, ".test-build");
  rmSync(out, { recursive: true, force: true });
  const entryPoints = readdirSync(join(here, "test"))
    .filter((name) => name.endsWith(".test.ts"))
    .map((name) => join("test", name));
  await esbuild.build({
    ...common,
    write: true,
    entryPoints,
    outdir: out,
    outExtension: { ".js": ".mjs" },
    platform: "node",
    format: "esm",
    target: "node18",
  });
  process.exit(0);
}

const outIndex = args.indexOf("--out");
const out = outIndex >= 0 ? args[outIndex + 1] : join(here, "..", "src", "beseda", "web", "static");
const hashed = (name, ext, bytes) =>
  `${name}.${createHash("sha256").update(bytes).digest("hex").slice(0, 12)}.${ext}`;
const one = (result) => result.outputFiles[0].contents;

const js = one(
  await esbuild.build({
    ...common,
    entryPoints: ["src/main.ts"],
    outfile: "app.js",
    format: "esm",
    target: "es2022",
    minify: true,
  }),
);
const css = one(
  await esbuild.build({
    ...common,
    entryPoints: ["src/style.css"],
    outfile: "app.css",
    minify: true,
  }),
);
const files = new Map();
const jsName = hashed("app", "js", js);
const cssName = hashed("app", "css", css);
files.set(jsName, js);
files.set(cssName, css);
const html = readFileSync(join(here, "public", "index.html"), "utf8")
  .replace("{{js}}", jsName)
  .replace("{{css}}", cssName);
files.set("index.html", Buffer.from(html));
const copied = readdirSync(join(here, "public"))
  .filter((name) => name !== "index.html")
  .sort();
for (const name of copied) files.set(name, readFileSync(join(here, "public", name)));

// The service worker caches exactly the shell; its version changes with any file of it.
const shell = ["./", ...[...files.keys()].sort()];
const version = createHash("sha256");
for (const name of [...files.keys()].sort()) version.update(name).update(files.get(name));
const sw = one(
  await esbuild.build({
    ...common,
    entryPoints: ["src/sw.ts"],
    outfile: "sw.js",
    format: "iife",
    target: "es2022",
    minify: true,
    define: {
      SHELL: JSON.stringify(shell),
      VERSION: JSON.stringify(version.digest("hex").slice(0, 12)),
    },
  }),
);
files.set("sw.js", sw);

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
for (const [name, bytes] of [...files].sort()) writeFileSync(join(out, name), bytes);
console.log(`built ${files.size} files into ${out}`);
