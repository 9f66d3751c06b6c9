//! ARCHITECTURE.md's structural invariants, checked on the source: the top-level modules of `src/`
//! import each other one way (no `crate::` cycle), nothing outside `src/config.rs` reads the
//! environment, `graph/` and `entra/` never name each other (both stand on `egress/`), and each
//! concern that ARCHITECTURE.md gives one owner is named in no other file.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

#[test]
fn the_top_level_modules_import_each_other_one_way() {
    let edges = module_edges(&sources());
    assert!(
        edges.contains_key("service") && edges["service"].contains("retry"),
        "the scan sees the imports: {edges:?}"
    );
    let config_users: Vec<&String> = edges
        .iter()
        .filter(|(_, to)| to.contains("config"))
        .map(|(from, _)| from)
        .collect();
    assert_eq!(config_users, ["app"], "only main and app use config");
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "`use crate::` cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn graph_and_entra_never_name_each_other() {
    let sources = sources();
    let edges = module_edges(&sources);
    assert!(
        edges["graph"].contains("egress") && edges["entra"].contains("egress"),
        "the scan sees both clients stand on egress: {edges:?}"
    );
    let strays: Vec<String> = sources
        .iter()
        .flat_map(|(path, text)| cross_names(path, text))
        .collect();
    assert!(
        strays.is_empty(),
        "graph/ knows Graph only and entra/ Entra ID only; what they share is in egress/ (the \
         modules that compose them, such as credentials.rs and service.rs, are outside both):\n{}",
        strays.join("\n")
    );
}

#[test]
fn nothing_outside_config_reads_the_environment() {
    let sources = sources();
    assert!(sources.len() > 20, "the scan sees src/: {}", sources.len());
    let reads: Vec<String> = sources
        .iter()
        .filter(|(path, _)| path != "config.rs")
        .flat_map(|(path, text)| environment_reads(path, text))
        .collect();
    assert!(
        reads.is_empty(),
        "only src/config.rs reads the environment:\n{}",
        reads.join("\n")
    );
}

/// What only some files may name, outside their tests: (what, the files or folders allowed, the
/// invariant of ARCHITECTURE.md it keeps).
const OWNERS: &[(&str, &[&str], &str)] = &[
    (
        "percent_encoding",
        &["graph/url.rs", "entra/authority.rs", "egress/url.rs"],
        "only graph/url.rs builds Graph URLs (and entra/authority.rs Entra's token URL, with the one path-segment encoding of egress/url.rs)",
    ),
    (
        "serde_json",
        &["graph/", "entra/", "simulator/"],
        "only graph/ reads Graph's JSON and entra/ Entra ID's (the simulator is their independent twin)",
    ),
    (
        "backoff()",
        &["egress/retry.rs", "graph/throttle.rs", "backoff.rs"],
        "there is one retry loop (egress/retry.rs) that waits between attempts; the throttle gate only sizes its windows by the same schedule",
    ),
    (
        "code_for_http_status",
        &["status.rs"],
        "only status.rs maps HTTP to gRPC",
    ),
    (
        "ErrorDetails",
        &["status.rs"],
        "only status.rs builds error details",
    ),
    (
        "backon",
        &["backoff.rs"],
        "only backoff.rs schedules the waits between attempts",
    ),
    (
        "proto::",
        &["service.rs", "server/", "request.rs"],
        "only service, server and request touch the generated types",
    ),
    (
        "static ",
        &["telemetry.rs"],
        "telemetry is the one place with process-wide state",
    ),
    (
        "install_default",
        &[],
        "the gateway installs no process-wide rustls provider (each TLS config names its own)",
    ),
    (
        "global::",
        &["telemetry.rs"],
        "telemetry is the one place with process-wide state",
    ),
];

#[test]
fn each_concern_with_one_owner_is_named_nowhere_else() {
    let sources = sources();
    let mut strays = Vec::new();
    for (needle, owners, invariant) in OWNERS {
        let named_in: Vec<&str> = sources
            .iter()
            .filter(|(_, text)| names(&non_test_code(text), needle))
            .map(|(path, _)| path.as_str())
            .collect();
        assert!(
            owners.is_empty()
                || named_in
                    .iter()
                    .any(|path| owners.iter().any(|o| path.starts_with(o))),
            "the scan finds `{needle}` in its owner"
        );
        for path in named_in {
            if !owners.iter().any(|owner| path.starts_with(owner)) {
                strays.push(format!("src/{path} names `{needle}`, but {invariant}"));
            }
        }
    }
    assert!(strays.is_empty(), "{}", strays.join("\n"));
}

#[test]
fn the_checks_catch_what_they_look_for() {
    let files = [
        ("a.rs", "use crate::{b::X, c};\n// crate::d in a comment\n"),
        (
            "b/mod.rs",
            "fn f() { crate::c::g(); let s = \"crate::a\"; }",
        ),
        ("c.rs", "use crate::{a::{self, Y}};"),
        ("d.rs", "pub(crate) fn f() {}"),
    ]
    .map(|(path, text)| (path.to_owned(), text.to_owned()));
    let edges = module_edges(&files);
    assert_eq!(edges["a"], BTreeSet::from(["b".to_owned(), "c".to_owned()]));
    assert_eq!(edges["b"], BTreeSet::from(["c".to_owned()]));
    let cycle = find_cycle(&edges).expect("a -> c -> a is a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"a".to_owned()) && cycle.contains(&"c".to_owned()));

    for code in [
        "let v = std::env::var(\"X\");",
        "use std::env; fn f() { env::args(); }",
        "let cli = Cli::parse();",
        "let m = Cli::command().try_get_matches_from(args);",
        "let f = EnvFilter::from_default_env();",
        "let m = Matcher::from_env();",
    ] {
        assert!(!environment_reads("x.rs", code).is_empty(), "{code}");
    }
    for code in [
        "// std::env::var in a comment",
        "let v = env!(\"CARGO_PKG_VERSION\");",
        "let s = \"std::env::var\";",
        "#[arg(long, env = \"X\")] x: u8,",
        "let id = Uuid::try_parse(&text);",
    ] {
        assert!(environment_reads("x.rs", code).is_empty(), "{code}");
    }
    // hyper-util's matcher reading HTTPS_PROXY itself is a read outside config too.
    assert!(!environment_reads("graph/connect.rs", "Matcher::from_env().intercept(x)").is_empty());

    for (path, code) in [
        ("entra/mod.rs", "use crate::graph::GraphBaseUrl;"),
        ("entra/x.rs", "use crate::{auth::A, graph::{self, B}};"),
        ("entra/x.rs", "fn f(s: &graph::Settings) {}"),
        ("graph/mod.rs", "use crate::entra::OnBehalfOf;"),
        ("graph/job.rs", "use crate::{entra, auth};"),
        ("graph/job.rs", "let x = entra::f();"),
    ] {
        assert!(!cross_names(path, code).is_empty(), "{path}: {code}");
    }
    for (path, code) in [
        (
            "entra/mod.rs",
            "// graph::Settings in a comment\nlet graph_host = 1;",
        ),
        ("entra/mod.rs", "let s = \"crate::graph\";"),
        ("entra/x.rs", "use crate::egress::Connector;"),
        ("graph/mod.rs", "let entra_id = 1;"),
        ("credentials.rs", "use crate::{entra, graph};"),
    ] {
        assert!(cross_names(path, code).is_empty(), "{path}: {code}");
    }

    assert!(names("static X: u8 = 1;", "static "));
    assert!(names("    pub static X: u8 = 1;", "static "));
    assert!(!names("fn f() -> &'static str", "static "));
    assert!(!names(
        &non_test_code("fn f() {}\n#[cfg(test)]\nmod tests { use crate::proto::X; }"),
        "proto::"
    ));
}

/// Every `.rs` file under `src/` other than the crate roots, as (path relative to `src/`, text).
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path
                    .strip_prefix(&src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if relative != "lib.rs" && relative != "main.rs" {
                    files.push((relative, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
    }
    files
}

/// The top-level module a file belongs to: `graph` for `graph/url.rs`, `status` for `status.rs`.
fn top_level_module(path: &str) -> String {
    let first = path.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first).to_owned()
}

/// Which top-level modules each one names through a `crate::` path (in `use` or in code, tests
/// included), itself left out.
fn module_edges(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| top_level_module(p)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files {
        let from = top_level_module(path);
        let code = code_only(text);
        let targets = edges.entry(from.clone()).or_default();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            let is_path = at == 0 || !rest[..at].ends_with(|c: char| c == '$' || is_ident(c));
            rest = &rest[at + "crate::".len()..];
            if !is_path {
                continue;
            }
            for name in first_segments(rest) {
                if name != from && modules.contains(&name) {
                    targets.insert(name);
                }
            }
        }
    }
    edges
}

/// The first segment of each path a `crate::` prefix leads to: `a` for `a::B`, and `a`, `b` for
/// `{a::X, b::{Y, Z}}`.
fn first_segments(after_crate: &str) -> Vec<String> {
    let after_crate = after_crate.trim_start();
    let Some(group) = after_crate.strip_prefix('{') else {
        return vec![after_crate.chars().take_while(|&c| is_ident(c)).collect()];
    };
    let mut items = Vec::new();
    let mut item = String::new();
    let mut depth = 0;
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => items.push(std::mem::take(&mut item)),
            c if depth == 0 => item.push(c),
            _ => {}
        }
    }
    items.push(item);
    items
        .iter()
        .map(|item| {
            item.trim_start()
                .chars()
                .take_while(|&c| is_ident(c))
                .collect()
        })
        .filter(|name: &String| !name.is_empty())
        .collect()
}

/// A cycle in `edges`, as the modules along it with the first repeated at the end.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

/// Where a file of `graph/` names `entra`, or one of `entra/` names `graph`: through a `crate::`
/// path (in `use` or in code, tests included) or a path that starts with the other's name.
fn cross_names(path: &str, text: &str) -> Vec<String> {
    let other = match top_level_module(path).as_str() {
        "graph" => "entra",
        "entra" => "graph",
        _ => return Vec::new(),
    };
    let code = code_only(text);
    let through_crate = module_edges(&[
        (path.to_owned(), code.clone()),
        (format!("{other}.rs"), String::new()),
    ])
    .values()
    .any(|targets| targets.contains(other));
    let needle = format!("{other}::");
    let by_path = code
        .match_indices(&needle)
        .any(|(at, _)| !code[..at].ends_with(|c: char| is_ident(c) || c == ':'));
    if through_crate || by_path {
        vec![format!("src/{path} names `{other}`")]
    } else {
        Vec::new()
    }
}

/// The places in `text` (a file under `src/`) that read environment variables or arguments.
/// `env!` and `option_env!` read the build's environment, not the
/// process's, and are allowed.
fn environment_reads(path: &str, text: &str) -> Vec<String> {
    const READS: &[&str] = &[
        "std::env",
        "env::var",
        "env::args",
        "from_env(",
        "from_default_env(",
        // A flag's `env = "…"` only declares its variable, beside the subsystem's settings; the
        // variables are read when the command line is parsed, which only config.rs does.
        "::parse()",
        "try_parse()",
        "parse_from(",
        "get_matches",
        "update_from(",
    ];
    let compact = code_only(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    READS
        .iter()
        .filter(|read| compact.contains(**read))
        .map(|read| format!("src/{path}: `{read}`"))
        .collect()
}

/// The code of a file before its unit tests (which this codebase keeps at the end, after
/// `#[cfg(test)]`), without comments and literals.
fn non_test_code(text: &str) -> String {
    let code = code_only(text);
    match code.find("#[cfg(test)]") {
        Some(at) => code[..at].to_owned(),
        None => code,
    }
}

/// Whether `code` names `needle`; `static ` counts only as an item (`static X`, `pub static X`),
/// not as the `'static` lifetime.
fn names(code: &str, needle: &str) -> bool {
    if needle == "static " {
        return code.lines().any(|line| {
            let line = line.trim_start();
            let line = line
                .strip_prefix("pub(crate) ")
                .or_else(|| line.strip_prefix("pub "))
                .unwrap_or(line);
            line.starts_with("static ")
        });
    }
    code.contains(needle)
}

/// `text` without comments, and with every string and char literal emptied.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if chars[i] == 'r'
            && !out.ends_with(is_ident)
            && rest[1..].iter().find(|&&c| c != '#') == Some(&'"')
        {
            let hashes = rest[1..].iter().take_while(|&&c| c == '#').count();
            let closing: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            i += 2 + hashes;
            while i < chars.len() && !chars[i..].starts_with(&closing) {
                i += 1;
            }
            i += closing.len();
            out.push_str("\"\"");
        } else if chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if chars[i] == '\'' && rest.get(2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else if chars[i] == '\'' && rest.get(1) == Some(&'\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}
