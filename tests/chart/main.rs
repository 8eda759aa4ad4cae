//! Checks of the Helm chart in `charts/suanli` that need no `helm` binary: its metadata, that
//! every value and helper a template names exists, that template actions are closed and blocks
//! balanced, and that the kube-scheduler configuration, the Service, the scheduler's config and
//! the agent agree on the extender contract (URL paths, verbs, ports, names, permissions).
//!
//! Several checks read a template with its simple actions substituted (`{{ .Values.x }}`,
//! `{{ .Release.Namespace }}`, `{{ include "x" . }}`, `{{ toYaml .Values.x | nindent N }}`)
//! and parse the result. The substitution refuses any action it does not know. Of control flow
//! it knows one case: an `if`, `range` or `with` over a value that is empty in values.yaml
//! renders nothing. Templates that need more are checked line by line instead.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;
use suanli_scheduler::config::ServerConfig;

/// The extender endpoints the scheduler serves (`POST`), on its HTTP port.
const EXTENDER_ENDPOINTS: [(&str, &str); 4] = [
    ("filterVerb", "/extender/filter"),
    ("prioritizeVerb", "/extender/prioritize"),
    ("bindVerb", "/extender/bind"),
    ("preemptVerb", "/extender/preempt"),
];

/// What the substitution writes for `.Release.Namespace`.
const NAMESPACE: &str = "release-namespace";

fn chart_dir() -> PathBuf {
    suanli_tests::workspace_root().join("charts/suanli")
}

fn read(relative: &str) -> String {
    let path = chart_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_yaml(file: &str, text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}\n{text}"))
}

fn values() -> Value {
    parse_yaml("values.yaml", &read("values.yaml"))
}

/// Every file under `templates/`, by name, sorted.
fn templates() -> BTreeMap<String, String> {
    let dir = chart_dir().join("templates");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_file() {
            let name = file_name(&path);
            files.insert(name.clone(), read(&format!("templates/{name}")));
        }
    }
    assert!(
        files.contains_key("_helpers.tpl"),
        "templates/_helpers.tpl exists"
    );
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("template names are UTF-8")
        .to_string()
}

fn template(name: &str) -> String {
    read(&format!("templates/{name}"))
}

// ---- scanning template actions -----------------------------------------------------------

/// One `{{ ... }}` action: where it sits and what it says, without its trim markers.
#[derive(Debug, Clone)]
struct Action {
    line: usize,
    start: usize,
    end: usize,
    body: String,
    trim_left: bool,
    trim_right: bool,
}

impl Action {
    /// The first word: `if`, `end`, `include`, `.Values.x`, ...
    fn keyword(&self) -> &str {
        self.body.split_whitespace().next().unwrap_or("")
    }

    fn is_comment(&self) -> bool {
        self.body.starts_with("/*")
    }
}

/// The actions of a template, or where one is never closed.
fn actions(file: &str, text: &str) -> Result<Vec<Action>, String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = text[at..].find("{{") {
        let start = at + offset;
        let line = text[..start].matches('\n').count() + 1;
        let unclosed = || format!("{file}:{line}: `{{{{` is never closed");
        let mut i = start + 2;
        let mut quote: Option<u8> = None;
        let end = loop {
            let Some(&c) = bytes.get(i) else {
                return Err(unclosed());
            };
            match quote {
                Some(b'"') if c == b'\\' => i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'`' => quote = Some(c),
                None if text[i..].starts_with("/*") => match text[i..].find("*/") {
                    Some(close) => i += close + 1,
                    None => return Err(unclosed()),
                },
                None if text[i..].starts_with("}}") => break i + 2,
                None => {}
            }
            i += 1;
        };
        let inner = &text[start + 2..end - 2];
        let trim_left = inner.starts_with("- ") || inner.starts_with("-\n");
        let trim_right = inner.ends_with(" -") || inner.ends_with("\n-");
        let body = inner
            .strip_prefix('-')
            .filter(|_| trim_left)
            .unwrap_or(inner);
        let body = body
            .strip_suffix('-')
            .filter(|_| trim_right)
            .unwrap_or(body);
        found.push(Action {
            line,
            start,
            end,
            body: body.trim().to_string(),
            trim_left,
            trim_right,
        });
        at = end;
    }
    Ok(found)
}

/// What is wrong with a template's block structure: an `end` or `else` outside a block, or a
/// block never ended.
fn block_problems(file: &str, actions: &[Action]) -> Vec<String> {
    let mut open: Vec<(&str, usize)> = Vec::new();
    let mut problems = Vec::new();
    for action in actions.iter().filter(|a| !a.is_comment()) {
        match action.keyword() {
            keyword @ ("if" | "range" | "with" | "define" | "block") => {
                open.push((keyword, action.line))
            }
            "else" => match open.last() {
                Some((keyword, _)) if matches!(*keyword, "if" | "range" | "with") => {}
                _ => problems.push(format!(
                    "{file}:{}: `else` outside an if, range or with",
                    action.line
                )),
            },
            "end" => {
                let closed = open.pop();
                if closed.is_none() {
                    problems.push(format!("{file}:{}: `end` closes no block", action.line));
                }
            }
            _ => {}
        }
    }
    for (keyword, line) in open {
        problems.push(format!("{file}:{line}: `{keyword}` is never ended"));
    }
    problems
}

fn has_control_flow(actions: &[Action]) -> bool {
    actions.iter().any(|a| {
        !a.is_comment() && matches!(a.keyword(), "if" | "range" | "with" | "define" | "block")
    })
}

/// The `.Values` paths an action names (`$.Values.a.b` too), as their segments.
fn values_paths(body: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut at = 0;
    while let Some(offset) = body[at..].find(".Values.") {
        let start = at + offset;
        let before = body[..start].chars().next_back();
        let rest = &body[start + ".Values.".len()..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        // `x.Values.y` would be a field of something else, not the chart's values.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            let path = rest[..len].trim_end_matches('.');
            paths.push(path.split('.').map(str::to_string).collect());
        }
        at = start + ".Values.".len() + len;
    }
    paths
}

fn lookup<'v>(values: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter()
        .try_fold(values, |node, key| node.as_mapping()?.get(key.as_str()))
}

/// The names given to `include` or `template` as a literal string.
fn included_names(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    for word in ["include \"", "template \""] {
        let mut at = 0;
        while let Some(offset) = body[at..].find(word) {
            let start = at + offset + word.len();
            let len = body[start..].find('"').unwrap_or(body.len() - start);
            names.push(body[start..start + len].to_string());
            at = start + len;
        }
    }
    names
}

// ---- substituting simple actions ----------------------------------------------------------

/// A helper's output is not known here. As a scalar it stands as its name with dots made
/// dashes; indented into a block it stands as a one-key mapping.
fn helper_placeholder(name: &str) -> String {
    name.replace('.', "-")
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn indent(text: &str, width: usize) -> String {
    let pad = " ".repeat(width);
    format!("{pad}{}", text.replace('\n', &format!("\n{pad}")))
}

/// The output of one action of the known kinds, with the chart's values.
fn evaluate(action: &Action, values: &Value) -> Result<String, String> {
    if action.is_comment() {
        return Ok(String::new());
    }
    let mut commands = action.body.split('|').map(str::trim);
    let first = commands.next().unwrap_or("");
    let words: Vec<&str> = first.split_whitespace().collect();
    let value_at = |reference: &str| -> Result<Value, String> {
        let path = reference
            .strip_prefix(".Values.")
            .ok_or_else(|| format!("`{reference}` is not a .Values path"))?;
        let path: Vec<String> = path.split('.').map(str::to_string).collect();
        lookup(values, &path)
            .cloned()
            .ok_or_else(|| format!("values.yaml has no {}", path.join(".")))
    };
    let mut from_helper = None;
    // `required "message" .Values.x`: the message may hold spaces, so it is cut off first.
    if let Some(rest) = first.strip_prefix("required \"") {
        let (message, reference) = rest
            .split_once('"')
            .ok_or_else(|| format!("unclosed message in `{}`", action.body))?;
        let value = value_at(reference.trim())?;
        if is_empty(&value) {
            return Err(format!("required: {message}"));
        }
        return pipe(action, value, None, commands);
    }
    let current = match words.as_slice() {
        [".Release.Namespace"] => Value::String(NAMESPACE.to_string()),
        [".Release.Name"] => Value::String("release-name".to_string()),
        [reference] if reference.starts_with(".Values.") => value_at(reference)?,
        ["include", name, "."] if name.starts_with('"') && name.ends_with('"') => {
            let name = name.trim_matches('"');
            from_helper = Some(name.to_string());
            Value::String(helper_placeholder(name))
        }
        ["toYaml", reference] => {
            let yaml = serde_yaml_ng::to_string(&value_at(reference)?)
                .map_err(|e| format!("toYaml {reference}: {e}"))?;
            Value::String(yaml.trim_end().to_string())
        }
        _ => return Err(format!("unsupported action `{}`", action.body)),
    };
    pipe(action, current, from_helper, commands)
}

/// The rest of a pipeline applied to its first command's value.
fn pipe<'c>(
    action: &Action,
    mut current: Value,
    mut from_helper: Option<String>,
    commands: impl Iterator<Item = &'c str>,
) -> Result<String, String> {
    for command in commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        current = match words.as_slice() {
            ["quote"] => Value::String(
                serde_json::to_string(&scalar_text(&current).unwrap_or_default())
                    .expect("a string serialises"),
            ),
            ["toJson"] => {
                Value::String(serde_json::to_string(&current).map_err(|e| format!("toJson: {e}"))?)
            }
            ["int64"] => match current.as_i64() {
                Some(n) => Value::String(n.to_string()),
                None => return Err(format!("int64 of {current:?}")),
            },
            ["nindent", width] => {
                let width: usize = width.parse().map_err(|e| format!("nindent {width}: {e}"))?;
                let text = match from_helper.take() {
                    Some(name) => format!("{}: included", helper_placeholder(&name)),
                    None => {
                        scalar_text(&current).ok_or_else(|| format!("nindent of {current:?}"))?
                    }
                };
                Value::String(format!("\n{}", indent(&text, width)))
            }
            _ => {
                return Err(format!(
                    "unsupported command `{command}` in `{}`",
                    action.body
                ));
            }
        };
    }
    scalar_text(&current).ok_or_else(|| format!("`{}` is not a scalar", action.body))
}

/// Go templates' falsehood: false, zero, nil, and empty strings, lists and maps.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Sequence(items) => items.is_empty(),
        Value::Mapping(map) => map.is_empty(),
        Value::Tagged(_) => false,
    }
}

/// For `if .Values.x`, `with .Values.x` and `range $k, $v := .Values.x`, whether `.Values.x`
/// is empty; an error for any other block or condition.
fn block_is_empty(action: &Action, values: &Value) -> Result<bool, String> {
    let words: Vec<&str> = action.body.split_whitespace().collect();
    let subject = match words.as_slice() {
        ["if" | "with" | "range", subject] => subject,
        ["range", .., ":=", subject] => subject,
        _ => return Err(format!("unsupported block `{}`", action.body)),
    };
    let path: Vec<String> = subject
        .strip_prefix(".Values.")
        .ok_or_else(|| format!("unsupported block subject `{subject}`"))?
        .split('.')
        .map(str::to_string)
        .collect();
    let value = lookup(values, &path).ok_or_else(|| format!("values.yaml has no {subject}"))?;
    Ok(is_empty(value))
}

/// `text` with every action replaced by its output, honouring `{{-` and `-}}`.
fn substitute(file: &str, text: &str, values: &Value) -> Result<String, String> {
    let found = actions(file, text)?;
    let mut out = String::new();
    let mut at = 0;
    let mut trim_next = false;
    let mut index = 0;
    while let Some(action) = found.get(index) {
        let mut between = &text[at..action.start];
        if trim_next {
            between = between.trim_start();
        }
        out.push_str(between);
        if action.trim_left {
            out.truncate(out.trim_end().len());
        }
        let at_line = |e: String| format!("{file}:{}: {e}", action.line);
        let skip_to = if !action.is_comment() && matches!(action.keyword(), "if" | "with" | "range")
        {
            if !block_is_empty(action, values).map_err(at_line)? {
                return Err(at_line(format!(
                    "`{}` is not empty in values.yaml; only empty blocks are skipped",
                    action.body
                )));
            }
            Some(matching_end(file, &found, index)?)
        } else {
            None
        };
        let last = match skip_to {
            // The whole block renders nothing; its `end` still trims what follows it.
            Some(end) => end,
            None => {
                out.push_str(&evaluate(action, values).map_err(at_line)?);
                index
            }
        };
        trim_next = found[last].trim_right;
        at = found[last].end;
        index = last + 1;
    }
    let rest = &text[at..];
    out.push_str(if trim_next { rest.trim_start() } else { rest });
    Ok(out)
}

/// The index of the `end` that closes the block opened by `found[open]`.
fn matching_end(file: &str, found: &[Action], open: usize) -> Result<usize, String> {
    let mut depth = 0usize;
    for (index, action) in found.iter().enumerate().skip(open) {
        if action.is_comment() {
            continue;
        }
        match action.keyword() {
            "if" | "range" | "with" | "define" | "block" => depth += 1,
            "end" => {
                depth -= 1;
                if depth == 0 {
                    return Ok(index);
                }
            }
            _ => {}
        }
    }
    Err(format!(
        "{file}:{}: `{}` is never ended",
        found[open].line, found[open].body
    ))
}

/// A template without control flow, substituted and parsed: one value per YAML document.
fn documents(file: &str) -> Vec<Value> {
    let text = substitute(file, &template(file), &values()).unwrap_or_else(|e| panic!("{e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file} with values substituted: {e}\n{text}"))
        })
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

fn document<'d>(docs: &'d [Value], kind: &str, name: &str) -> &'d Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name} among {docs:?}"))
}

/// The one line of `text` that contains `needle`.
fn line_with<'t>(file: &str, text: &'t str, needle: &str) -> &'t str {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    match lines.as_slice() {
        [line] => line,
        _ => panic!("{file}: expected one line with {needle:?}, found {lines:?}"),
    }
}

/// The lines of `text` from the one starting with `from` (trimmed) up to, not including, the
/// next one starting with `to`.
fn lines_between(file: &str, text: &str, from: &str, to: &str) -> String {
    let mut lines = text.lines().skip_while(|l| l.trim() != from);
    assert!(lines.next().is_some(), "{file}: no line `{from}`");
    lines
        .take_while(|l| !l.trim_start().starts_with(to))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One `key = value` line of the scheduler's suanli.toml, substituted and read as TOML.
fn toml_setting(line: &str) -> (String, toml::Value) {
    let text = substitute("scheduler-secret.yaml", line.trim(), &values())
        .unwrap_or_else(|e| panic!("{e}"));
    let table: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not TOML: {e}"));
    table.into_iter().next().expect("one key")
}

fn u64_at(values: &Value, path: &str) -> u64 {
    let path: Vec<String> = path.split('.').map(str::to_string).collect();
    lookup(values, &path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("values.yaml: {} is a whole number", path.join(".")))
}

fn str_at<'v>(values: &'v Value, path: &str) -> &'v str {
    let path: Vec<String> = path.split('.').map(str::to_string).collect();
    lookup(values, &path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("values.yaml: {} is a string", path.join(".")))
}

// ---- the chart's metadata -----------------------------------------------------------------

#[test]
fn chart_yaml_names_the_workspace_version() {
    let chart = parse_yaml("Chart.yaml", &read("Chart.yaml"));
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("suanli"));
    assert_eq!(chart["type"].as_str(), Some("application"));
    let version = chart["version"].as_str().expect("version is a string");
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u64>().is_ok()),
        "version {version:?} is not semver"
    );

    let root = suanli_tests::workspace_root().join("Cargo.toml");
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())),
    )
    .expect("the root Cargo.toml is TOML");
    let workspace_version = manifest["workspace"]["package"]["version"]
        .as_str()
        .expect("workspace.package.version");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(workspace_version),
        "appVersion follows the workspace version"
    );
}

#[test]
fn values_hold_the_contract_defaults() {
    let values = values();
    assert_eq!(str_at(&values, "schedulerName"), "suanli");
    assert_eq!(str_at(&values, "gpuResource"), "nvidia.com/gpu");
    assert_eq!(u64_at(&values, "scheduler.ports.grpc"), 7070);
    assert_eq!(u64_at(&values, "scheduler.ports.http"), 7080);
    assert_eq!(
        str_at(&values, "kubeScheduler.image.repository"),
        "registry.k8s.io/kube-scheduler"
    );
    assert_eq!(str_at(&values, "scheduler.kubernetes.api"), "in-cluster");
    // No token ships with the chart: an install must choose its own.
    assert_eq!(str_at(&values, "auth.joinToken"), "");
}

// ---- every template -----------------------------------------------------------------------

#[test]
fn template_actions_are_closed_and_blocks_balance() {
    let mut problems = Vec::new();
    for (file, text) in templates() {
        match actions(&file, &text) {
            Ok(actions) => problems.extend(block_problems(&file, &actions)),
            Err(e) => problems.push(e),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_values_reference_exists() {
    let values = values();
    let mut missing = Vec::new();
    let mut seen = 0;
    for (file, text) in templates() {
        for action in actions(&file, &text).expect("actions are closed") {
            for path in values_paths(&action.body) {
                seen += 1;
                if lookup(&values, &path).is_none() {
                    missing.push(format!(
                        "{file}:{}: .Values.{} is not in values.yaml",
                        action.line,
                        path.join(".")
                    ));
                }
            }
        }
    }
    assert!(seen > 50, "only {seen} .Values references found");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn every_include_names_a_define_and_every_included_file_exists() {
    let files = templates();
    let helpers = actions("_helpers.tpl", &files["_helpers.tpl"]).expect("actions are closed");
    let defined: BTreeSet<String> = helpers
        .iter()
        .filter(|a| a.keyword() == "define")
        .flat_map(|a| a.body.split('"').nth(1).map(str::to_string))
        .collect();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (file, text) in &files {
        for action in actions(file, text).expect("actions are closed") {
            for name in included_names(&action.body) {
                if !defined.contains(&name) {
                    problems.push(format!(
                        "{file}:{}: {name:?} is not defined in _helpers.tpl",
                        action.line
                    ));
                }
                used.insert(name);
            }
            // `include (print $.Template.BasePath "/x.yaml") .` renders another template.
            if let Some(rest) = action.body.split("$.Template.BasePath \"").nth(1) {
                let other = rest.split('"').next().unwrap_or("").trim_start_matches('/');
                if !files.contains_key(other) {
                    problems.push(format!(
                        "{file}:{}: includes templates/{other}, which does not exist",
                        action.line
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for name in [
        "suanli.scheduler.fullname",
        "suanli.kubeScheduler.fullname",
        "suanli.agent.fullname",
        "suanli.labels",
    ] {
        assert!(used.contains(name), "no template includes {name}");
    }
}

#[test]
fn templates_without_control_flow_render_to_named_kubernetes_objects() {
    let mut checked = 0;
    for (file, text) in templates() {
        if !file.ends_with(".yaml") {
            continue;
        }
        let found = actions(&file, &text).expect("actions are closed");
        if has_control_flow(&found) {
            continue;
        }
        for doc in documents(&file) {
            for field in ["apiVersion", "kind"] {
                assert!(
                    doc[field].as_str().is_some(),
                    "{file}: a document lacks {field}"
                );
            }
            let kind = doc["kind"].as_str().unwrap_or("document");
            assert!(
                doc["metadata"]["name"].as_str().is_some(),
                "{file}: a {kind} has no name"
            );
            // Every object carries the chart's labels, so `helm` and `kubectl -l` find it.
            assert!(
                doc["metadata"]["labels"]
                    .get(helper_placeholder("suanli.labels"))
                    .is_some(),
                "{file}: a {kind} lacks the chart's labels: {:?}",
                doc["metadata"]
            );
            checked += 1;
        }
    }
    // Service, ConfigMap, both RBAC files: at least one document each.
    assert!(checked >= 10, "only {checked} documents checked");
}

// ---- the extender contract ----------------------------------------------------------------

fn scheduler_service() -> Value {
    let docs = documents("scheduler-service.yaml");
    document(
        &docs,
        "Service",
        &helper_placeholder("suanli.scheduler.fullname"),
    )
    .clone()
}

fn service_port(service: &Value, name: &str) -> u64 {
    service["spec"]["ports"]
        .as_sequence()
        .expect("the Service has ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["port"].as_u64())
        .unwrap_or_else(|| panic!("the Service has no {name} port"))
}

fn kube_scheduler_config() -> Value {
    let docs = documents("kube-scheduler-configmap.yaml");
    let map = document(
        &docs,
        "ConfigMap",
        &helper_placeholder("suanli.kubeScheduler.fullname"),
    );
    let text = map["data"]["config.yaml"]
        .as_str()
        .expect("the ConfigMap holds config.yaml");
    parse_yaml("config.yaml", text)
}

#[test]
fn kube_scheduler_calls_the_extender_endpoints_on_the_service_http_port() {
    let values = values();
    let config = kube_scheduler_config();
    assert_eq!(
        config["apiVersion"].as_str(),
        Some("kubescheduler.config.k8s.io/v1")
    );
    assert_eq!(config["kind"].as_str(), Some("KubeSchedulerConfiguration"));
    let profiles = config["profiles"].as_sequence().expect("profiles");
    assert_eq!(profiles.len(), 1, "one profile: {profiles:?}");
    assert_eq!(
        profiles[0]["schedulerName"].as_str(),
        Some(str_at(&values, "schedulerName"))
    );

    let extenders = config["extenders"].as_sequence().expect("extenders");
    assert_eq!(extenders.len(), 1, "one extender: {extenders:?}");
    let extender = &extenders[0];
    let url = extender["urlPrefix"].as_str().expect("urlPrefix");
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url} is plain HTTP, as enableHTTPS is false"));
    let (authority, prefix) = rest.split_at(rest.find('/').expect("urlPrefix has a path"));
    let (host, port) = authority.rsplit_once(':').expect("urlPrefix names a port");
    for (verb_key, endpoint) in EXTENDER_ENDPOINTS {
        let verb = extender[verb_key]
            .as_str()
            .unwrap_or_else(|| panic!("{verb_key} is set"));
        assert_eq!(format!("{prefix}/{verb}"), endpoint, "{verb_key}");
    }

    let service = scheduler_service();
    let service_host = format!(
        "{}.{}.svc",
        service["metadata"]["name"].as_str().expect("Service name"),
        service["metadata"]["namespace"]
            .as_str()
            .expect("Service namespace")
    );
    assert_eq!(
        host, service_host,
        "the extender calls the scheduler's Service"
    );
    let port: u64 = port.parse().expect("a numeric port");
    assert_eq!(port, service_port(&service, "http"));
    assert_eq!(port, 7080);

    assert_eq!(extender["nodeCacheCapable"].as_bool(), Some(false));
    assert_eq!(extender["enableHTTPS"].as_bool(), Some(false));
    assert_eq!(extender["ignorable"].as_bool(), Some(false));
    let weight = extender["weight"]
        .as_u64()
        .expect("weight is a whole number");
    assert!((1..=100).contains(&weight), "weight {weight}");
    let timeout = extender["httpTimeout"].as_str().expect("httpTimeout");
    assert!(
        timeout.ends_with('s') && timeout.trim_end_matches('s').parse::<u32>().is_ok(),
        "httpTimeout {timeout:?} is a duration in seconds"
    );
    let managed = extender["managedResources"]
        .as_sequence()
        .expect("managedResources");
    assert_eq!(managed.len(), 1, "{managed:?}");
    assert_eq!(
        managed[0]["name"].as_str(),
        Some(str_at(&values, "gpuResource"))
    );
    assert_eq!(managed[0]["ignoredByScheduler"].as_bool(), Some(true));

    // Leader election uses the lease the kube-scheduler's Role grants, in the release's namespace.
    let election = &config["leaderElection"];
    assert_eq!(election["resourceLock"].as_str(), Some("leases"));
    assert_eq!(election["resourceNamespace"].as_str(), Some(NAMESPACE));
}

#[test]
fn scheduler_listens_where_the_service_and_pod_point() {
    let values = values();
    let secret = template("scheduler-secret.yaml");
    let service = scheduler_service();

    for (key, port_name) in [("http_addr", "http"), ("grpc_addr", "grpc")] {
        let (name, value) = toml_setting(line_with("scheduler-secret.yaml", &secret, key));
        assert_eq!(name, key);
        let addr: SocketAddr = value
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{key} = {value} is not an address"));
        // Reachable from other pods, not only from inside its own.
        assert!(addr.ip().is_unspecified(), "{key} = {addr}");
        assert_eq!(u64::from(addr.port()), service_port(&service, port_name));
    }

    // The pod's named ports, which the Service targets, are the same numbers.
    let deployment = template("scheduler-deployment.yaml");
    let ports = lines_between(
        "scheduler-deployment.yaml",
        &deployment,
        "ports:",
        "readinessProbe:",
    );
    let ports = substitute("scheduler-deployment.yaml", &ports, &values).expect("simple actions");
    let ports: Vec<BTreeMap<String, Value>> =
        serde_yaml_ng::from_str(&ports).unwrap_or_else(|e| panic!("{e}\n{ports}"));
    for name in ["grpc", "http"] {
        let container = ports
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|p| p.get("containerPort").and_then(Value::as_u64));
        assert_eq!(container, Some(service_port(&service, name)), "{name} port");
    }
    let targets: Vec<&str> = service["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|p| p["targetPort"].as_str())
        .collect();
    assert_eq!(targets, ["grpc", "http"]);

    // The database sits on the mounted volume.
    let (_, data_dir) = toml_setting(line_with("scheduler-secret.yaml", &secret, "data_dir ="));
    assert_eq!(
        data_dir.as_str(),
        Some(str_at(&values, "scheduler.dataDir"))
    );
    let mount = line_with(
        "scheduler-deployment.yaml",
        &deployment,
        "mountPath: {{ .Values.scheduler.dataDir }}",
    );
    assert!(mount.trim_start().starts_with("mountPath:"), "{mount}");
    assert!(deployment.contains("type: Recreate"), "one pod at a time");
    assert!(deployment.contains("--config=/etc/suanli/suanli.toml"));
    assert!(deployment.contains("key: suanli.toml"));
}

#[test]
fn scheduler_config_turns_on_kubernetes_with_the_extenders_gpu_resource() {
    let values = values();
    let secret = template("scheduler-secret.yaml");
    let section = lines_between("scheduler-secret.yaml", &secret, "[kubernetes]", "{{");
    let settings: BTreeMap<String, toml::Value> = section
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(toml_setting)
        .collect();
    assert_eq!(
        settings.keys().map(String::as_str).collect::<Vec<_>>(),
        ["api", "gpu_resource", "reconcile_interval_s"]
    );
    assert_eq!(settings["api"].as_str(), Some("in-cluster"));
    assert_eq!(
        settings["reconcile_interval_s"].as_integer(),
        Some(10),
        "{settings:?}"
    );
    let extender = &kube_scheduler_config()["extenders"][0];
    assert_eq!(
        settings["gpu_resource"].as_str(),
        extender["managedResources"][0]["name"].as_str(),
        "Suanli accounts for the resource kube-scheduler leaves to it"
    );
    assert_eq!(
        settings["gpu_resource"].as_str(),
        Some(str_at(&values, "gpuResource"))
    );
}

#[test]
fn agents_dial_the_grpc_port_as_their_kubernetes_node() {
    let values = values();
    let daemonset = template("agent-daemonset.yaml");
    let file = "agent-daemonset.yaml";

    let scheduler = line_with(file, &daemonset, "--scheduler=");
    let scheduler = substitute(file, scheduler.trim(), &values).expect("simple actions");
    let service = scheduler_service();
    assert_eq!(
        scheduler,
        format!(
            "- --scheduler=http://{}.{NAMESPACE}.svc:{}",
            service["metadata"]["name"].as_str().expect("Service name"),
            service_port(&service, "grpc")
        )
    );

    // The node name is Kubernetes' own, from the downward API.
    assert_eq!(
        line_with(file, &daemonset, "--node=").trim(),
        "- --node=$(NODE_NAME)"
    );
    let env = lines_between(file, &daemonset, "- name: NODE_NAME", "- name:");
    assert!(env.contains("fieldPath: spec.nodeName"), "{env}");

    // The CID prefix comes from values, one segment per flag.
    for segment in ["provider", "region", "domain"] {
        let flag = line_with(file, &daemonset, &format!("--{segment}="));
        let flag = substitute(file, flag.trim(), &values).expect("simple actions");
        assert_eq!(
            flag,
            format!(
                "- --{segment}={}",
                str_at(&values, &format!("agent.cid.{segment}"))
            )
        );
    }

    // The token comes from the Secret's key, never from a flag.
    assert!(!daemonset.contains("--token"), "the token is not a flag");
    let token = lines_between(file, &daemonset, "- name: SUANLI_AGENT_TOKEN", "- name:");
    assert!(token.contains("secretKeyRef"), "{token}");
    let key = line_with(file, &token, "key:")
        .trim()
        .trim_start_matches("key:")
        .trim();
    let secret = template("scheduler-secret.yaml");
    assert!(
        secret
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{key}:"))),
        "the Secret has no {key:?} key"
    );

    // Scheduled only where the values put it, reading the host's /sys.
    assert!(daemonset.contains("{{- with .Values.agent.nodeSelector }}"));
    assert!(daemonset.contains("{{- with .Values.agent.tolerations }}"));
    assert!(daemonset.contains("--sysfs-root=/host"));
    assert!(daemonset.contains("mountPath: /host/sys"));
    assert_eq!(
        lookup(
            &values,
            &[
                "agent".into(),
                "securityContext".into(),
                "privileged".into()
            ]
        )
        .and_then(Value::as_bool),
        Some(false),
        "the agent is not privileged unless an operator says so"
    );
}

#[test]
fn the_scheduler_accepts_the_suanli_toml_the_chart_writes() {
    let file = "scheduler-secret.yaml";
    let template = template(file);
    let without_token = substitute(file, &template, &values());
    assert!(
        without_token
            .as_ref()
            .is_err_and(|e| e.contains("auth.joinToken is required")),
        "an install without a join token fails: {without_token:?}"
    );

    let token = "chart-test-join-token";
    let mut values = values();
    *values
        .get_mut("auth")
        .and_then(|auth| auth.get_mut("joinToken"))
        .expect("values.yaml has auth.joinToken") = Value::String(token.to_string());
    let text = substitute(file, &template, &values).unwrap_or_else(|e| panic!("{e}"));
    let secret = parse_yaml(file, &text);
    assert_eq!(secret["stringData"]["join-token"].as_str(), Some(token));
    let config_text = secret["stringData"]["suanli.toml"]
        .as_str()
        .expect("the Secret holds suanli.toml");
    let config = ServerConfig::parse(Path::new("suanli.toml"), config_text)
        .unwrap_or_else(|e| panic!("{e}\n{config_text}"));
    assert_eq!(config.http_addr.to_string(), "0.0.0.0:7080");
    assert_eq!(config.grpc_addr.to_string(), "0.0.0.0:7070");
    assert_eq!(
        config.data_dir,
        Path::new(str_at(&values, "scheduler.dataDir"))
    );
    assert_eq!(config.auth.join_tokens, [token]);
    assert_eq!(config.policy, str_at(&values, "scheduler.policy"));
    assert_eq!(config.kubernetes.api, "in-cluster");
    assert_eq!(config.kubernetes.reconcile_interval_s, 10);
    assert_eq!(
        config.kubernetes.gpu_resource,
        str_at(&values, "gpuResource")
    );
    assert_eq!(
        config.preemption.min_runtime_s,
        u64_at(&values, "scheduler.preemption.minRuntimeSeconds")
    );
}

// ---- permissions --------------------------------------------------------------------------

fn grants(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    let has = |rule: &Value, field: &str, want: &str| {
        rule[field]
            .as_sequence()
            .is_some_and(|items| items.iter().any(|i| i.as_str() == Some(want)))
    };
    role["rules"].as_sequence().is_some_and(|rules| {
        rules.iter().any(|rule| {
            has(rule, "apiGroups", group)
                && has(rule, "resources", resource)
                && has(rule, "verbs", verb)
        })
    })
}

/// Whether a binding of `kind` in `docs` gives `role_kind`/`role` to the service account.
fn binds(docs: &[Value], kind: &str, role_kind: &str, role: &str, account: &str) -> Option<Value> {
    docs.iter()
        .find(|d| {
            d["kind"].as_str() == Some(kind)
                && d["roleRef"]["kind"].as_str() == Some(role_kind)
                && d["roleRef"]["name"].as_str() == Some(role)
                && d["subjects"].as_sequence().is_some_and(|subjects| {
                    subjects.iter().any(|s| {
                        s["kind"].as_str() == Some("ServiceAccount")
                            && s["name"].as_str() == Some(account)
                            && s["namespace"].as_str() == Some(NAMESPACE)
                    })
                })
        })
        .cloned()
}

#[test]
fn the_scheduler_may_bind_and_annotate_pods_and_read_nodes() {
    let docs = documents("scheduler-rbac.yaml");
    let name = helper_placeholder("suanli.scheduler.fullname");
    document(&docs, "ServiceAccount", &name);
    let role = document(&docs, "ClusterRole", &name);
    for verb in ["get", "list", "watch", "patch"] {
        assert!(grants(role, "", "pods", verb), "pods {verb}");
    }
    assert!(grants(role, "", "pods/binding", "create"));
    for verb in ["get", "list", "watch"] {
        assert!(grants(role, "", "nodes", verb), "nodes {verb}");
    }
    assert!(!grants(role, "", "nodes", "patch"), "no more than it needs");
    assert!(binds(&docs, "ClusterRoleBinding", "ClusterRole", &name, &name).is_some());
    let deployment = template("scheduler-deployment.yaml");
    assert!(
        deployment.contains("serviceAccountName: {{ include \"suanli.scheduler.fullname\" . }}")
    );
}

#[test]
fn the_kube_scheduler_holds_the_standard_roles_and_its_lease() {
    let docs = documents("kube-scheduler-rbac.yaml");
    let account = helper_placeholder("suanli.kubeScheduler.fullname");
    document(&docs, "ServiceAccount", &account);
    for role in ["system:kube-scheduler", "system:volume-scheduler"] {
        assert!(
            binds(&docs, "ClusterRoleBinding", "ClusterRole", role, &account).is_some(),
            "{role}"
        );
    }
    let lease_role = docs
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("Role")
                && ["get", "create", "update"]
                    .iter()
                    .all(|verb| grants(d, "coordination.k8s.io", "leases", verb))
        })
        .expect("a Role for the leader-election lease");
    assert_eq!(
        lease_role["metadata"]["namespace"].as_str(),
        Some(NAMESPACE)
    );
    let lease_role_name = lease_role["metadata"]["name"].as_str().expect("a name");
    let binding = binds(&docs, "RoleBinding", "Role", lease_role_name, &account)
        .expect("the lease Role is bound");
    assert_eq!(binding["metadata"]["namespace"].as_str(), Some(NAMESPACE));

    let reader = binds(
        &docs,
        "RoleBinding",
        "Role",
        "extension-apiserver-authentication-reader",
        &account,
    )
    .expect("the authentication reader is bound");
    assert_eq!(
        reader["metadata"]["namespace"].as_str(),
        Some("kube-system")
    );

    let deployment = template("kube-scheduler-deployment.yaml");
    assert!(
        deployment
            .contains("serviceAccountName: {{ include \"suanli.kubeScheduler.fullname\" . }}")
    );
    assert!(deployment.contains(
        "image: {{ .Values.kubeScheduler.image.repository }}:{{ .Values.kubeScheduler.image.tag }}"
    ));
}

// ---- the checks themselves ----------------------------------------------------------------

#[test]
fn the_scanner_finds_unclosed_actions_and_unbalanced_blocks() {
    assert!(actions("t", "a: {{ .Values.x }").is_err());
    assert!(
        actions("t", "a: {{ \"}}\" }}").is_ok(),
        "}} inside a string"
    );
    let found = actions("t", "{{- if .Values.a }}\nb: 1\n{{ else }}\n").expect("closed");
    assert_eq!(
        block_problems("t", &found),
        ["t:1: `if` is never ended"],
        "{found:?}"
    );
    let found = actions("t", "{{ end }}").expect("closed");
    assert_eq!(block_problems("t", &found), ["t:1: `end` closes no block"]);
    let found = actions("t", "{{/* {{ end }} */}}").expect("closed");
    assert!(
        block_problems("t", &found).is_empty(),
        "comments are not blocks"
    );
}

#[test]
fn the_scanner_finds_values_paths_and_includes() {
    assert_eq!(
        values_paths("required \"x\" .Values.auth.joinToken | quote"),
        [vec!["auth".to_string(), "joinToken".to_string()]]
    );
    assert_eq!(
        values_paths("default (include \"n\" .) $.Values.a.b_c"),
        [vec!["a".to_string(), "b_c".to_string()]]
    );
    let values = values();
    assert!(lookup(&values, &["scheduler".into(), "nope".into()]).is_none());
    assert_eq!(
        included_names("printf \"%s\" (include \"a.b\" .) | x (template \"c\")"),
        ["a.b", "c"]
    );
}

#[test]
fn substitution_honours_trim_markers_and_refuses_what_it_cannot_do() {
    let values = values();
    let text = "labels:\n    {{- include \"suanli.labels\" . | nindent 4 }}\nport: {{ .Values.scheduler.ports.http | int64 }}\n";
    assert_eq!(
        substitute("t", text, &values).expect("simple"),
        "labels:\n    suanli-labels: included\nport: 7080\n"
    );
    assert!(substitute("t", "{{ .Values.missing }}", &values).is_err());
    assert!(
        substitute(
            "t",
            "{{ .Values.image.tag | default .Chart.AppVersion }}",
            &values
        )
        .is_err()
    );
    assert_eq!(
        substitute(
            "t",
            "a\n{{- if .Values.agent.fixture }}\nb\n{{- end }}\nc",
            &values
        ),
        Ok("a\nc".to_string()),
        "an empty block renders nothing"
    );
    assert!(substitute("t", "{{ if .Values.scheduler.logJson }}x{{ end }}", &values).is_err());
    assert!(substitute("t", "{{ if .Values.agent.fixture }}", &values).is_err());
}
