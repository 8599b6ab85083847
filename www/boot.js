// What both training workers (worker.js, solo-worker.js) do first: load the wasm module and
// download the digits, telling the page through `status(text)`.

import init from './pkg/easel_client.js';
import { initWasm } from './wasm-select.js';

/** Instantiates the wasm module and resolves to the bytes of /data/mnist.bin. */
export async function loadWasmAndDigits(status) {
  status('Loading the WebAssembly module…');
  await initWasm(init); // the relaxed-SIMD build where the browser has it
  status('Downloading 10,000 digits (7.9 MB)…');
  const resp = await fetch('/data/mnist.bin');
  if (!resp.ok) throw new Error(`could not download the digits: HTTP ${resp.status} for /data/mnist.bin`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  status('Checking the digits and starting the device…');
  return bytes;
}
