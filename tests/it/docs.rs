//! The documentation's shape: README.md is a front door of at most 200 lines that lists every page
//! of `docs/`, its short examples are lines of the programs the interop suite runs, and no relative
//! link between README.md, ARCHITECTURE.md, BENCHMARKS.md and `docs/*.md` points at a file or a
//! heading that does not exist.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Issue 20's bound: the README is a front door, the reference lives in `docs/`.
const README_MAX_LINES: usize = 200;

#[test]
fn the_readme_is_a_front_door_of_at_most_200_lines() {
    let readme = read(&repo().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; at most {README_MAX_LINES}: move reference to docs/"
    );
    // What CI runs as "the README's test command" (.ci/run) is still the README's.
    let ci = read(&repo().join(".ci/run"));
    assert!(
        ci.contains("\ncargo test --locked\n"),
        ".ci/run runs cargo test"
    );
    assert!(
        fenced_blocks(&section(&readme, "## Run and test"))
            .iter()
            .any(|(_, body)| body.lines().any(|line| line.starts_with("cargo test "))),
        "README.md's \"Run and test\" shows `cargo test`"
    );
}

#[test]
fn the_readme_lists_every_page_of_docs() {
    let readme = read(&repo().join("README.md"));
    let pages = markdown_files_in(&repo().join("docs"));
    assert!(pages.len() >= 10, "the scan sees docs/: {pages:?}");
    let unlisted: Vec<String> = pages
        .iter()
        .map(|page| format!("(docs/{})", page.file_name().unwrap().to_string_lossy()))
        .filter(|link| !readme.contains(link.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "README.md's table of contents does not link {unlisted:?}"
    );
}

#[test]
fn the_readmes_examples_are_lines_of_the_programs_the_interop_suite_runs() {
    let readme = read(&repo().join("README.md"));
    let calling = read(&repo().join("docs/calling.md"));
    let examples = fenced_blocks(&section(&readme, "## Calling it"));
    let languages: Vec<&str> = examples.iter().map(|(lang, _)| lang.as_str()).collect();
    assert_eq!(
        languages,
        ["sh", "python", "js", "go"],
        "one short example per language in README.md's \"Calling it\""
    );
    let programs = fenced_blocks(&section(&calling, "## Calling it"));
    let mut strays = Vec::new();
    for (language, example) in &examples {
        let lines: BTreeSet<&str> = programs
            .iter()
            .filter(|(lang, _)| lang == language)
            .flat_map(|(_, body)| body.lines())
            .collect();
        assert!(
            !lines.is_empty(),
            "docs/calling.md has a {language} program"
        );
        strays.extend(
            example
                .lines()
                .filter(|line| !line.trim().is_empty() && !lines.contains(line))
                .map(|line| format!("```{language}: {line}")),
        );
    }
    assert!(
        strays.is_empty(),
        "README.md's examples must be lines of docs/calling.md's programs, which the interop \
         suite runs (tests/interop/python/test_readme_snippets.py):\n{}",
        strays.join("\n")
    );
}

#[test]
fn every_relative_link_points_at_a_file_and_heading_that_exist() {
    let mut pages = vec![
        repo().join("README.md"),
        repo().join("ARCHITECTURE.md"),
        repo().join("BENCHMARKS.md"),
    ];
    pages.extend(markdown_files_in(&repo().join("docs")));
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in &pages {
        let text = read(page);
        for target in relative_links(&text) {
            checked += 1;
            if let Err(why) = resolve(page, &target) {
                let name = page.strip_prefix(repo()).unwrap_or(page).display();
                broken.push(format!("{name}: ({target}): {why}"));
            }
        }
    }
    assert!(checked > 50, "the scan sees the links: {checked}");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_catches_a_missing_file_or_heading() {
    let readme = repo().join("README.md");
    assert!(resolve(&readme, "docs/settings.md").is_ok());
    assert!(resolve(&readme, "docs/settings.md#certificate-rotation").is_ok());
    assert!(resolve(&readme, "#try-it-in-one-command").is_ok());
    assert!(resolve(&readme, "docs/no-such-page.md").is_err());
    assert!(resolve(&readme, "docs/settings.md#no-such-heading").is_err());
    assert!(resolve(&readme, "#no-such-heading").is_err());
    assert_eq!(
        relative_links(
            "[a](b.md#c) `[x](not-a-link.md)` [web](https://example.com)\n```\n[y](z.md)\n```\n"
        ),
        ["b.md#c"]
    );
    assert_eq!(
        anchors(
            "# Graph's connections\n## Throttling, as MSAL does it\n## `--flag` and more\n## Two\n## Two\n"
        ),
        BTreeSet::from([
            "graphs-connections".to_owned(),
            "throttling-as-msal-does-it".to_owned(),
            "--flag-and-more".to_owned(),
            "two".to_owned(),
            "two-1".to_owned(),
        ])
    );
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn markdown_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    files.sort();
    files
}

/// The text under `heading` (a whole line, such as `## Calling it`) up to the next heading of the
/// same level or higher; lines in fenced code blocks (a shell comment, say) are never headings.
fn section(text: &str, heading: &str) -> String {
    let level = heading.split(' ').next().unwrap().len();
    let mut lines = text.lines().skip_while(|line| *line != heading);
    assert!(lines.next().is_some(), "no {heading:?} section");
    let mut in_fence = false;
    let mut body = String::new();
    for line in lines {
        if line.starts_with("```") {
            in_fence = !in_fence;
        }
        let depth = line.chars().take_while(|c| *c == '#').count();
        if !in_fence && (1..=level).contains(&depth) && line[depth..].starts_with(' ') {
            break;
        }
        body.push_str(line);
        body.push('\n');
    }
    body
}

/// The fenced code blocks of `text`: (language, body).
fn fenced_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(language)) => open = Some((language.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The text outside fenced code blocks and inline code spans, line by line.
fn prose_lines(text: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            // Every other piece between backticks is code.
            lines.push(line.split('`').step_by(2).collect::<Vec<_>>().join(" "));
        }
    }
    lines
}

/// The targets of `[text](target)` links that stay in this repository.
fn relative_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if !target.contains("://") && !target.starts_with("mailto:") && !target.is_empty() {
                links.push(target.to_owned());
            }
            rest = &rest[end..];
        }
    }
    links
}

/// The anchors GitHub gives the headings of `text`: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`, and `-1`, `-2`… after a repeated one.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_default();
        anchors.insert(match *count {
            0 => slug.clone(),
            n => format!("{slug}-{n}"),
        });
        *count += 1;
    }
    anchors
}

/// Whether `target`, linked from `page`, names a file that exists and, after `#`, a heading in it.
fn resolve(page: &Path, target: &str) -> Result<(), String> {
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        page.parent().unwrap().join(path)
    };
    if !file.exists() {
        return Err(format!("{} does not exist", file.display()));
    }
    let Some(anchor) = anchor else { return Ok(()) };
    if file.extension().is_none_or(|ext| ext != "md") {
        return Err("an anchor into a file that is not Markdown".to_owned());
    }
    if anchors(&read(&file)).contains(anchor) {
        Ok(())
    } else {
        Err(format!("no heading with the anchor #{anchor}"))
    }
}
