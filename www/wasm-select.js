// Which build of the wasm client this browser runs. `cargo xtask wasm` builds two modules
// from the same code with the same JavaScript glue (it checks that the glue is identical):
// `pkg/easel_client_bg.wasm` with 128-bit SIMD, which every browser Easel targets has, and
// `pkg/easel_client_relaxed_bg.wasm` with relaxed SIMD as well, whose CPU kernels use
// `f32x4.relaxed_madd` (one fused multiply-add). A module that uses an instruction the engine
// does not know fails to compile as a whole, so the choice is made before loading: by asking
// the engine to validate a tiny module that uses that one instruction.

/** A module with one function returning `f32x4.relaxed_madd` of three `v128.const`s. */
const RELAXED_MADD_PROBE = (() => {
  const konst = [0xfd, 0x0c, ...new Array(16).fill(0)]; // v128.const 0
  const body = [0x00, ...konst, ...konst, ...konst, 0xfd, 0x85, 0x02, 0x0b]; // relaxed_madd; end
  const code = [0x01, body.length, ...body];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // types: () -> v128
    0x03, 0x02, 0x01, 0x00, // one function of type 0
    0x0a, code.length, ...code, // its code
  ]);
})();

/** Whether this engine has relaxed SIMD (validates the probe). */
export function hasRelaxedSimd() {
  try {
    return WebAssembly.validate(RELAXED_MADD_PROBE);
  } catch {
    return false;
  }
}

/**
 * The build to load: `relaxed` where the engine has relaxed SIMD, else `baseline`. `wanted`
 * (`auto`, `baseline` or `relaxed`; a page's `?wasm=` parameter) can force the baseline, or
 * ask for the relaxed build, which is still refused where the engine lacks it.
 */
export function wasmBuild(wanted = 'auto') {
  if (wanted === 'baseline') return 'baseline';
  return hasRelaxedSimd() ? 'relaxed' : 'baseline';
}

/** The URL of the module for `build` (as `wasmBuild` returns it). */
export function wasmUrl(build) {
  const file = build === 'relaxed' ? 'easel_client_relaxed_bg.wasm' : 'easel_client_bg.wasm';
  return new URL(`./pkg/${file}`, import.meta.url);
}

/**
 * Instantiates the wasm client through its glue's `init` with the build `wanted` asks for
 * (see `wasmBuild`), and resolves to the build's name. If the relaxed build cannot be loaded
 * (a server without it), the baseline one is.
 */
export async function initWasm(init, wanted = 'auto') {
  const build = wasmBuild(wanted);
  if (build === 'relaxed') {
    try {
      await init({ module_or_path: wasmUrl(build) });
      return build;
    } catch (e) {
      console.warn(`the relaxed-SIMD build did not load (${e?.message ?? e}); loading the baseline one`);
    }
  }
  await init({ module_or_path: wasmUrl('baseline') });
  return 'baseline';
}
