//! The files built into the `easel` binary by `easel/build.rs`: the pages of `www/` (with the
//! wasm bundle and the chart library) and the MNIST digits. They make the binary the whole
//! server: `easel serve`, `easel train` and `easel bots` need no checkout. `--www DIR` and
//! `--data FILE` (or `EASEL_DATA`) still replace them, for development.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

pub use generated::{MNIST, MNIST_SOURCE, WWW, WWW_SOURCE};

/// The bytes of the built-in file at `path` under `www/` (`/` separated, no leading `/`).
pub fn www_file(path: &str) -> Option<&'static [u8]> {
    WWW.binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| WWW[i].1)
}

/// The built-in digits, or an error that says how to get a binary with them (or what to
/// pass instead).
pub fn mnist() -> anyhow::Result<&'static [u8]> {
    MNIST.ok_or_else(|| {
        anyhow::anyhow!(
            "this easel was built without the MNIST digits ({MNIST_SOURCE} was missing): run \
             `cargo xtask data`, then build easel again, or pass --data FILE (or set \
             EASEL_DATA) with the path of an Easel MNIST file"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_table_is_sorted_so_lookups_find_every_file() {
        assert!(WWW.windows(2).all(|w| w[0].0 < w[1].0));
        for (path, bytes) in WWW {
            assert_eq!(www_file(path), Some(*bytes), "{path}");
        }
        assert_eq!(www_file("no/such/file.js"), None);
    }

    /// The binary carries the page, the wasm bundle, the chart library and valid digits
    /// whenever the checkout had them when it was built (as `cargo xtask test` makes sure),
    /// byte for byte as they are on disk now: a stale or partial embedding fails here.
    #[test]
    fn built_in_files_are_the_checkouts_and_the_digits_pass_their_checksum() {
        let www = Path::new(WWW_SOURCE);
        for required in [
            "index.html",
            "app.js",
            "worker.js",
            "boot.js",
            "teacher.html",
        ] {
            assert!(www_file(required).is_some(), "{required} is not built in");
        }
        for path in crate::serve::BUNDLE
            .iter()
            .chain(crate::serve::VENDOR.iter())
        {
            let on_disk = std::fs::read(www.join(path));
            match (www_file(path), on_disk) {
                (Some(built_in), Ok(disk)) => assert!(
                    built_in == disk.as_slice(),
                    "the built-in {path} differs from {} (rebuild easel)",
                    www.join(path).display()
                ),
                (None, Ok(_)) => panic!("{path} is in the checkout but not built in"),
                (Some(_), Err(e)) => panic!("{path} is built in but unreadable on disk: {e}"),
                (None, Err(_)) => eprintln!("note: {path} was not built (run `cargo xtask wasm`)"),
            }
        }
        match (MNIST, std::fs::read(MNIST_SOURCE)) {
            (Some(built_in), Ok(disk)) => {
                assert!(built_in == disk.as_slice(), "the built-in digits are stale");
                let m = easel_client::data::Mnist::from_bytes(built_in)
                    .unwrap_or_else(|e| panic!("the built-in digits: {e}"));
                assert_eq!(m.train.len(), easel_client::data::MNIST_TRAIN);
                assert_eq!(m.test.len(), easel_client::data::MNIST_TEST);
            }
            (None, Ok(_)) => panic!("{MNIST_SOURCE} exists but is not built in"),
            (Some(_), Err(e)) => panic!("the digits are built in but {MNIST_SOURCE}: {e}"),
            (None, Err(_)) => eprintln!("note: no digits built in (run `cargo xtask data`)"),
        }
    }
}
