//! `cargo xtask`: Easel's build steps, written in Rust.

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        _ => {
            eprintln!("usage: cargo xtask <demo|test|data|wasm>");
            Ok(())
        }
    }
}
