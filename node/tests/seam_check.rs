//! The clock and randomness seams, checked: no node code outside `node/src/seams/` reads a clock
//! or draws unseeded randomness directly.
//!
//! The simulator runs the real node code with tokio time paused, a skewed clock per node and a
//! seeded generator; a direct `Instant::now`, `SystemTime::now` or `thread_rng` would escape it
//! (a run would stop being a function of its seed, or a node's clock skew would not reach the
//! code that reads the time). This test walks `node/src/**` and `node/core/src/**` (skipped while
//! absent) and fails, naming each file and line, when such a call appears outside
//! `node/src/seams/` and outside test code (`#[cfg(test)]` items, and files declared by a
//! `#[cfg(test)] mod name;`). The scan skips comments and string literals.
//!
//! Not checked, because a text scan cannot tell it apart: iteration over a `HashMap` with a
//! random hasher (ARCHITECTURE.md asks for `BTreeMap`s where maps are iterated).
//!
//! Where code must read tokio's clock (a deadline compared with openraft's timers), it calls
//! `seams::clock::scheduling_now`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a non-test file outside the seams must not contain, with why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("Instant::now", "reads the monotonic clock: use the node's `Clock` or `seams::clock::scheduling_now`"),
    ("SystemTime::now", "reads the wall clock: use the node's `Clock::wall_now_ms`"),
    ("thread_rng", "unseeded randomness: use the node's `SeededRng`"),
    ("rand::rng", "unseeded randomness: use the node's `SeededRng`"),
    ("rand::random", "unseeded randomness: use the node's `SeededRng`"),
    ("OsRng", "unseeded randomness: use the node's `SeededRng`"),
    ("from_entropy", "unseeded randomness: use the node's `SeededRng`"),
    ("from_os_rng", "unseeded randomness: use the node's `SeededRng`"),
];

/// Breaks that exist in files another change owns, as (file, pattern, occurrences). Each entry
/// must match exactly: a new occurrence fails the check, and so does a fixed one, so that the
/// entry is deleted in the commit that fixes it and the list only shrinks.
const KNOWN_BREAKS: &[(&str, &str, usize)] = &[];

/// One forbidden call: where, and which pattern.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Finding {
    file: String,
    line: usize,
    pattern: &'static str,
    text: String,
}

#[test]
fn no_clock_or_unseeded_randomness_outside_the_seams() {
    let node = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = node.parent().expect("node/ has a parent");
    let mut findings = Vec::new();
    let mut scanned = 0;
    for root in [node.join("src"), node.join("core/src")] {
        if !root.is_dir() {
            continue;
        }
        for file in rust_files(&root) {
            if file.starts_with(node.join("src/seams")) {
                continue;
            }
            let rel = file.strip_prefix(repo).expect("under the repository").display().to_string();
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {rel}: {e}"));
            scanned += 1;
            findings.extend(scan(&rel, &text));
        }
    }
    // The walk itself must have looked: an empty or misplaced tree would pass vacuously.
    assert!(scanned >= 20, "only {scanned} files scanned under {}", node.display());

    let findings = drop_test_files(findings, repo);
    let mut counts: BTreeMap<(String, &str), Vec<&Finding>> = BTreeMap::new();
    for f in &findings {
        counts.entry((f.file.clone(), f.pattern)).or_default().push(f);
    }
    let mut problems = Vec::new();
    for ((file, pattern), found) in &counts {
        let known = KNOWN_BREAKS.iter().find(|(f, p, _)| f == file && p == pattern).map(|k| k.2);
        if known != Some(found.len()) {
            for f in found {
                let why = FORBIDDEN.iter().find(|(p, _)| *p == f.pattern).map_or("", |(_, why)| why);
                problems.push(format!("{}:{}: `{}` ({why}): {}", f.file, f.line, f.pattern, f.text.trim()));
            }
            if let Some(n) = known {
                problems.push(format!("{file}: KNOWN_BREAKS allows exactly {n} `{pattern}`, found {}", found.len()));
            }
        }
    }
    for (file, pattern, n) in KNOWN_BREAKS {
        if !counts.contains_key(&(file.to_string(), *pattern)) {
            problems.push(format!(
                "{file}: no `{pattern}` left (KNOWN_BREAKS expects {n}); delete its entry in node/tests/seam_check.rs"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "node code must reach clocks and randomness only through node/src/seams/:\n{}",
        problems.join("\n")
    );
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("list {}: {e}", d.display())).path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Drops the findings in files that a `#[cfg(test)] mod name;` declares (`name.rs` beside the
/// declaring file, or inside the declaring file's folder).
fn drop_test_files(findings: Vec<Finding>, repo: &Path) -> Vec<Finding> {
    let mut test_files = Vec::new();
    let files: std::collections::BTreeSet<&str> = findings.iter().map(|f| f.file.as_str()).collect();
    for file in &files {
        let path = Path::new(file);
        let dir = path.parent().unwrap_or(Path::new(""));
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        for declaring in ["mod.rs", "lib.rs", "main.rs"].iter().map(|n| dir.join(n)).chain(
            // `foo.rs` declares `foo/name.rs`.
            dir.parent().zip(dir.file_name()).map(|(p, n)| p.join(format!("{}.rs", n.to_string_lossy()))),
        ) {
            let Ok(text) = std::fs::read_to_string(repo.join(&declaring)) else { continue };
            if test_modules(&text).iter().any(|m| m == stem) {
                test_files.push(file.to_string());
            }
        }
    }
    findings.into_iter().filter(|f| !test_files.contains(&f.file)).collect()
}

/// The names of the modules a file declares as `#[cfg(test)] mod name;`.
fn test_modules(text: &str) -> Vec<String> {
    let code = strip(text);
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        rest = &rest[at + "#[cfg(test)]".len()..];
        let item = rest.trim_start();
        let item = item.strip_prefix("pub ").unwrap_or(item).trim_start();
        if let Some(after) = item.strip_prefix("mod ") {
            let name: String = after.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let tail = after.trim_start()[name.len()..].trim_start();
            if tail.starts_with(';') {
                out.push(name);
            }
        }
    }
    out
}

/// The forbidden calls in one file's non-test code.
fn scan(file: &str, text: &str) -> Vec<Finding> {
    let code = blank_test_items(&strip(text));
    let mut out = Vec::new();
    for (i, line) in code.lines().enumerate() {
        for (pattern, _) in FORBIDDEN {
            if occurs(line, pattern) {
                let original = text.lines().nth(i).unwrap_or("").to_string();
                out.push(Finding { file: file.to_string(), line: i + 1, pattern, text: original });
            }
        }
    }
    out
}

/// Whether `pattern` occurs in `line` as a path or a call, not as part of a longer name, and not
/// as the name of a function being defined (`fn thread_rng()` is openraft's runtime hook, whose
/// body is seeded; `seed_thread_rng` is another name).
fn occurs(line: &str, pattern: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(at) = line[from..].find(pattern) {
        let start = from + at;
        let end = start + pattern.len();
        from = end;
        let before = line[..start].chars().next_back();
        let after = line[end..].chars().next();
        if before.is_some_and(ident) || after.is_some_and(ident) {
            continue;
        }
        if line[..start].trim_end().ends_with("fn") {
            continue;
        }
        return true;
    }
    false
}

/// The text with comments and the contents of string and char literals replaced by spaces
/// (newlines kept, so line numbers stay).
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&chars, i) {
            // A raw string: r"..." or r#"..."#; anything else starting with r# is a raw identifier.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push('"');
            for _ in i..=j {
                out.push(' ');
            }
            out.pop();
            i = j + 1;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '"' && (0..hashes).all(|k| chars.get(i + 1 + k) == Some(&'#')) {
                    out.push('"');
                    for _ in 0..hashes {
                        out.push(' ');
                    }
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a): a literal closes within
            // a few characters, a lifetime does not close at all.
            let close = if next == Some('\\') {
                (i + 2..chars.len().min(i + 12)).find(|&j| chars[j] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(j) => {
                    out.push('\'');
                    for _ in i + 1..j {
                        out.push(' ');
                    }
                    out.push('\'');
                    i = j + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// The (already stripped) text with every item under a `#[cfg(test)]` attribute blanked: up to
/// its first `;` when that comes before any `{`, else to the `}` that closes its first `{`.
fn blank_test_items(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out: Vec<char> = code.chars().collect();
    let text: Vec<char> = out.clone();
    let attr: Vec<char> = ATTR.chars().collect();
    let mut i = 0;
    while i + attr.len() <= text.len() {
        if text[i..i + attr.len()] != attr[..] {
            i += 1;
            continue;
        }
        let mut j = i + attr.len();
        let mut depth = 0usize;
        while j < text.len() {
            match text[j] {
                ';' if depth == 0 => break,
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        let end = j.min(text.len() - 1);
        for c in &mut out[i..=end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end + 1;
    }
    out.into_iter().collect()
}

/// The scanner's own behaviour: a check that cannot fail is no check.
mod scanner {
    use super::*;

    fn lines_of(src: &str) -> Vec<(usize, &'static str)> {
        scan("x.rs", src).into_iter().map(|f| (f.line, f.pattern)).collect()
    }

    #[test]
    fn finds_direct_clock_and_randomness_calls_with_their_lines() {
        let src = "fn a() {\n    let t = std::time::Instant::now();\n    let w = SystemTime::now();\n    let r = rand::thread_rng();\n    let s = tokio::time::Instant::now;\n    let q = rand::rng();\n}\n";
        assert_eq!(
            lines_of(src),
            vec![(2, "Instant::now"), (3, "SystemTime::now"), (4, "thread_rng"), (5, "Instant::now"), (6, "rand::rng")]
        );
    }

    #[test]
    fn skips_comments_strings_and_longer_names() {
        let src = "// Instant::now in a comment\n/* SystemTime::now /* nested */ thread_rng */\nlet s = \"Instant::now\";\nlet r = r#\"thread_rng()\"#;\nseed_thread_rng(1);\nfn thread_rng() -> R { seeded() }\nlet c = '\"'; let l: &'static str = \"x\";\nlet t = MyInstant::nowhere();\n";
        assert_eq!(lines_of(src), vec![]);
    }

    #[test]
    fn skips_test_items_but_not_the_code_after_them() {
        let src = "#[cfg(test)]\nmod tests {\n    fn f() { let _ = Instant::now(); if x { y() } }\n}\n#[cfg(test)]\nfn helper() { SystemTime::now(); }\nfn real() { let _ = Instant::now(); }\n";
        assert_eq!(lines_of(src), vec![(7, "Instant::now")]);
    }

    #[test]
    fn a_brace_in_a_string_or_char_does_not_end_a_test_module_early() {
        let src = "#[cfg(test)]\nmod tests {\n    const B: char = '}';\n    const S: &str = \"}}\";\n    fn f() { Instant::now(); }\n}\nfn g() { thread_rng(); }\n";
        assert_eq!(lines_of(src), vec![(7, "thread_rng")]);
    }

    #[test]
    fn finds_test_module_files() {
        assert_eq!(test_modules("mod a;\n#[cfg(test)]\nmod b_tests;\n#[cfg(test)]\nmod inline { }\n"), vec!["b_tests"]);
    }
}
