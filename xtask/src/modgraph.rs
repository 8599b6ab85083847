//! The check that a crate's modules use each other without a cycle (`cargo xtask test`
//! runs it on the crates listed in [`ACYCLIC`]).
//!
//! Each `.rs` file under `src/` is a module (`lib.rs` the root, `a/mod.rs` and `a.rs` are
//! `a`, `a/b.rs` is `a::b`; inline `mod x { .. }` blocks belong to their file). Module `m`
//! uses module `n` when its code (comments, strings and `#[cfg(test)]` modules left out)
//! names a path into `n`: `crate::n::..`, `super::..`, `self::..`, or a `use` of a child
//! module. A path to an item a module re-exports counts as a use of the module that defines
//! it. A module's `pub use` of its own submodules is its interface, not a use: that is how
//! `lib.rs` and a `mod.rs` present their children.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Crates whose module graph must have no cycle, by source directory.
pub const ACYCLIC: &[&str] = &[
    "protocol/src",
    "relay/src",
    "sim/src",
    "bots/src",
    "easel/src",
];

type Module = Vec<String>;

/// `cargo xtask modules [SRC..]`: checks each source directory (default [`ACYCLIC`]).
pub fn run(dirs: &[String]) -> Result<()> {
    let dirs: Vec<String> = if dirs.is_empty() {
        ACYCLIC.iter().map(|s| s.to_string()).collect()
    } else {
        dirs.to_vec()
    };
    let mut failed = 0;
    for d in &dirs {
        match check(&crate::root().join(d)) {
            Ok(()) => eprintln!("{d}: no import cycle"),
            Err(e) => {
                eprintln!("{e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} crates have import cycles", dirs.len());
    }
    Ok(())
}

/// Fails with the cycles it finds in the crate whose sources are in `src`.
pub fn check(src: &Path) -> Result<()> {
    let files = read_modules(src)?;
    let graph = graph(&files);
    let cycles = cycles(&graph);
    if cycles.is_empty() {
        return Ok(());
    }
    let mut msg = format!("import cycles among the modules of {}:\n", src.display());
    for c in cycles {
        let names: Vec<String> = c.iter().map(name).collect();
        msg.push_str(&format!("  {}\n", names.join(" <-> ")));
        for a in &c {
            for b in graph[a].iter().filter(|b| c.contains(b)) {
                msg.push_str(&format!("    {} uses {}\n", name(a), name(b)));
            }
        }
    }
    msg.push_str(
        "move what both sides need into a module below them (see ARCHITECTURE.md's layers)",
    );
    bail!(msg)
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".to_string()
    } else {
        m.join("::")
    }
}

/// Every module of the crate and its source with comments, strings and test modules blanked.
fn read_modules(src: &Path) -> Result<BTreeMap<Module, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut m: Module = rel
                .iter()
                .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            match m.last().map(String::as_str) {
                Some("lib") | Some("main") if m.len() == 1 => m.clear(),
                Some("mod") => {
                    m.pop();
                }
                // A file of tests (`mod tests;` under `#[cfg(test)]`).
                Some("tests") => continue,
                _ => {}
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            out.insert(m, strip_tests(&blank(&text)));
        }
    }
    Ok(out)
}

/// The source with comments and string and char literals replaced by spaces (lines kept).
fn blank(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let keep = |c: u8| if c == b'\n' { b'\n' } else { b' ' };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(keep(b[i]));
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            // A raw string: r"..", r#".."#.
            let mut j = i + 1;
            while j < b.len() && b[j] == b'#' {
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let hashes = j - i - 1;
                let mut end = j + 1;
                while end < b.len()
                    && !(b[end] == b'"'
                        && b[end + 1..].iter().take_while(|&&c| c == b'#').count() >= hashes)
                {
                    end += 1;
                }
                let stop = (end + 1 + hashes).min(b.len());
                out.extend(b[i..stop].iter().map(|&c| keep(c)));
                i = stop;
            } else {
                out.push(b[i]);
                i += 1;
            }
        } else if b[i] == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    out.push(keep(b[i]));
                    i += 1;
                }
                out.push(keep(b[i]));
                i += 1;
            }
            out.push(b' ');
            i += 1;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x', '\n', '\''); lifetimes ('a) have no closing quote.
            let mut j = i + 1;
            if b[j] == b'\\' {
                j += 2;
            } else {
                j += 1;
            }
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            out.extend(std::iter::repeat_n(b' ', j + 1 - i));
            i = j + 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The source without its `#[cfg(test)] mod .. { .. }` blocks.
fn strip_tests(src: &str) -> String {
    let mut s = src.to_string();
    while let Some(at) = s.find("#[cfg(test)]") {
        let rest = &s[at..];
        let Some(brace) = rest.find(['{', ';']) else {
            break;
        };
        let end = if rest.as_bytes()[brace] == b';' {
            at + brace + 1
        } else {
            let mut depth = 0;
            let mut end = s.len();
            for (k, c) in rest.char_indices().skip(brace) {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = at + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end
        };
        s.replace_range(at..end, "");
    }
    s
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a piece of source names from `at` (just after `crate`, `super`, `self` or
/// a `use`'s first segment): `a::b::{c, d::e}` gives `[a, b, c]` and `[a, b, d, e]`.
fn paths_at(s: &str, mut at: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let b = s.as_bytes();
    let mut path = prefix;
    // A group item (`{a::b, c}`) and a `use`'s path start with a segment, not with `::`.
    let mut first = path.is_empty();
    loop {
        while at < b.len() && b[at].is_ascii_whitespace() {
            at += 1;
        }
        if s[at..].starts_with("::") {
            at += 2;
            while at < b.len() && b[at].is_ascii_whitespace() {
                at += 1;
            }
            if at < b.len() && b[at] == b'{' {
                at += 1;
                loop {
                    while at < b.len() && (b[at].is_ascii_whitespace() || b[at] == b',') {
                        at += 1;
                    }
                    if at >= b.len() || b[at] == b'}' {
                        return at + 1;
                    }
                    let before = at;
                    let mut item = Vec::new();
                    at = group_item(s, at, &mut item);
                    for p in item {
                        out.push(path.iter().cloned().chain(p).collect());
                    }
                    if at == before {
                        // Something else (`*`, `as x`): step over it.
                        at += 1;
                    }
                }
            }
            let start = at;
            while at < b.len() && is_ident(b[at] as char) {
                at += 1;
            }
            if start == at {
                break;
            }
            path.push(s[start..at].to_string());
        } else if first {
            first = false;
            let start = at;
            while at < b.len() && is_ident(b[at] as char) {
                at += 1;
            }
            if start == at {
                break;
            }
            path.push(s[start..at].to_string());
        } else {
            break;
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
    at
}

/// One item of a `{..}` group, as paths relative to the group's prefix.
fn group_item(s: &str, at: usize, out: &mut Vec<Vec<String>>) -> usize {
    paths_at(s, at, Vec::new(), out)
}

/// One path named in a module: its segments (starting with `crate`, `super` or `self`),
/// and whether it is in a `pub use` statement.
struct Named {
    path: Vec<String>,
    public_use: bool,
}

/// The paths module `m`'s source names.
fn named(m: &Module, src: &str, modules: &BTreeMap<Module, String>) -> Vec<Named> {
    let mut out = Vec::new();
    let b = src.as_bytes();
    // `use` statements, whose first segment may be a child module.
    let mut uses: Vec<(usize, usize, bool)> = Vec::new();
    let mut i = 0;
    while let Some(k) = src[i..].find("use ") {
        let at = i + k;
        i = at + 4;
        if at > 0 && is_ident(b[at - 1] as char) {
            continue;
        }
        let before = src[..at].trim_end();
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let end = src[at..].find(';').map_or(src.len(), |e| at + e);
        uses.push((at + 4, end, public));
    }
    for &(start, end, public) in &uses {
        let mut paths = Vec::new();
        paths_at(&src[..end], start, Vec::new(), &mut paths);
        for p in paths {
            let first = p[0].as_str();
            let child = {
                let mut c = m.clone();
                c.push(first.to_string());
                modules.contains_key(&c)
            };
            let path = if matches!(first, "crate" | "super" | "self") {
                p
            } else if child {
                std::iter::once("self".to_string()).chain(p).collect()
            } else {
                continue;
            };
            out.push(Named {
                path,
                public_use: public,
            });
        }
    }
    // Paths in expressions and types.
    for key in ["crate", "super", "self"] {
        let mut i = 0;
        while let Some(k) = src[i..].find(key) {
            let at = i + k;
            i = at + key.len();
            if at > 0 && (is_ident(b[at - 1] as char) || b[at - 1] == b':') {
                continue;
            }
            if !src[i..].starts_with("::") || uses.iter().any(|&(s, e, _)| (s..e).contains(&at)) {
                continue;
            }
            let mut paths = Vec::new();
            paths_at(src, i, vec![key.to_string()], &mut paths);
            out.extend(paths.into_iter().map(|path| Named {
                path,
                public_use: false,
            }));
        }
    }
    out
}

/// The module a path from module `m` leads into, and the item it names there.
fn resolve(
    m: &Module,
    path: &[String],
    modules: &BTreeMap<Module, String>,
) -> (Module, Option<String>) {
    let mut base = m.clone();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        _ => {}
    }
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    for (k, seg) in rest.iter().enumerate() {
        let mut next = base.clone();
        next.push(seg.clone());
        if modules.contains_key(&next) {
            base = next;
        } else {
            return (base, Some(rest[k].clone()));
        }
    }
    (base, None)
}

/// Module uses, with items named through a module's re-exports counted as uses of the
/// module that defines them.
fn graph(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let named: BTreeMap<&Module, Vec<Named>> = modules
        .iter()
        .map(|(m, src)| (m, named(m, src, modules)))
        .collect();
    // Re-exports: (module, item) -> the module the item comes from.
    let mut reexports: BTreeMap<(Module, String), Module> = BTreeMap::new();
    for (m, ns) in &named {
        for n in ns.iter().filter(|n| n.public_use) {
            let (target, item) = resolve(m, &n.path, modules);
            if let Some(item) = item {
                reexports.insert(((*m).clone(), item), target);
            }
        }
    }
    let home = |mut target: Module, item: Option<String>| {
        // Follow re-exports (at most as deep as there are modules).
        if let Some(item) = item {
            for _ in 0..modules.len() {
                match reexports.get(&(target.clone(), item.clone())) {
                    Some(t) if *t != target => target = t.clone(),
                    _ => break,
                }
            }
        }
        target
    };
    let mut graph = BTreeMap::new();
    for (m, ns) in &named {
        let mut uses = BTreeSet::new();
        for n in ns {
            let (target, item) = resolve(m, &n.path, modules);
            let target = home(target, item);
            let descendant = target.len() > m.len() && target.starts_with(m);
            if target == **m || target.is_empty() || (n.public_use && descendant) {
                continue;
            }
            uses.insert(target);
        }
        graph.insert((*m).clone(), uses);
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let Some((w, _)) = s.graph.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.push(w.clone());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krate(files: &[(&str, &str)]) -> tempfile_dir::Dir {
        let dir = tempfile_dir::Dir::new();
        for (path, text) in files {
            let p = dir.0.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    /// A temporary directory removed when dropped (no dependency for one test).
    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p =
                    std::env::temp_dir().join(format!("easel-modgraph-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_cycle_through_a_reexport_is_found_and_a_facade_is_not_one() {
        let with_cycle = krate(&[
            (
                "lib.rs",
                "pub mod a;\npub mod b;\npub mod s;\npub use a::Thing;\n",
            ),
            ("a.rs", "use crate::b::{self, Other};\npub struct Thing;\n"),
            // `crate::Thing` is a's, through lib.rs's re-export.
            (
                "b.rs",
                "pub struct Other(crate::Thing);\n// crate::s::x in a comment\n",
            ),
            ("s/mod.rs", "pub mod t;\npub use t::T;\n"),
            (
                "s/t.rs",
                "pub struct T;\nconst S: &str = \"crate::a::Thing\";\n#[cfg(test)]\nmod tests { use crate::a::Thing; }\n",
            ),
        ]);
        let err = check(&with_cycle.0).unwrap_err().to_string();
        assert!(err.contains("a <-> b"), "{err}");
        assert!(
            err.contains("a uses b") && err.contains("b uses a"),
            "{err}"
        );
        // s/mod.rs re-exports its child; t's test module and string name a, but t uses nothing.
        assert!(!err.contains("s::t") && !err.contains("crate::s"), "{err}");

        let without = krate(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub use a::Thing;\n"),
            ("a.rs", "pub struct Thing;\n"),
            (
                "b.rs",
                "use super::a;\npub struct Other(a::Thing, crate::Thing);\n",
            ),
        ]);
        check(&without.0).unwrap();
    }
}
