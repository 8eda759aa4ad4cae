//! Job files: YAML (one job per document, `---` between several), parsed with the engine's
//! serde types and validated locally, with errors that point at the file, line, column and
//! field.
//!
//! Serde errors carry their own position. Validation runs on the parsed spec, which has no
//! positions, so the offending field is found again by walking the document: a seeded
//! deserializer follows the field path and fails on purpose when it reaches the value, and
//! the YAML parser stamps that failure with the value's position.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use suanli_engine::JobSpec;

/// A problem in a job file, located as precisely as the problem allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct JobFileError {
    pub file: String,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    /// Field path (`gpu.milli`), when the problem is about one field.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for JobFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Parses and validates every job in `text`; `file` names it in errors.
pub fn parse_jobs(file: &str, text: &str) -> Result<Vec<JobSpec>, JobFileError> {
    let error = |position, field, message: String| JobFileError {
        file: file.to_string(),
        position,
        field,
        message,
    };
    // First pass: which documents are empty (a trailing `---`, a file of comments).
    let mut present = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| error(position(&e), None, message(&e)))?;
        present.push(!value.is_null());
    }
    let mut specs = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        if !present.get(index).copied().unwrap_or(false) {
            continue;
        }
        let spec: JobSpec = serde::Deserialize::deserialize(doc)
            .map_err(|e| error(position(&e), None, message(&e)))?;
        if let Err(invalid) = spec.validate() {
            let position = locate(text, index, &invalid.field);
            return Err(error(
                position,
                Some(invalid.field.clone()),
                invalid.problem.to_string(),
            ));
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err(error(None, None, "no job in the file".to_string()));
    }
    Ok(specs)
}

fn position(e: &serde_yaml_ng::Error) -> Option<(usize, usize)> {
    e.location().map(|l| (l.line(), l.column()))
}

/// The error's text without the ` at line L column C` the position already says.
fn message(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    if let Some(l) = e.location() {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(stripped) = text.strip_suffix(&suffix) {
            return stripped.to_string();
        }
    }
    text
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `placement.data[0].domain` → `placement`, `data`, `[0]`, `domain`.
fn segments(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Segment::Key(name.to_string()));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let Some(close) = open.find(']') else { break };
            match open[..close].parse() {
                Ok(i) => out.push(Segment::Index(i)),
                Err(_) => out.push(Segment::Key(open[..close].to_string())),
            }
            rest = &open[close + 1..];
        }
    }
    out
}

/// Fails on purpose with this text when the walk reaches the wanted value.
const FOUND: &str = "\u{0}suanli-field-found\u{0}";

/// Line and column of the value at `field` in document `doc_index`; the nearest enclosing
/// value that exists when the field itself is absent (a default that failed validation).
fn locate(text: &str, doc_index: usize, field: &str) -> Option<(usize, usize)> {
    let path = segments(field);
    (0..=path.len()).rev().find_map(|len| {
        let doc = serde_yaml_ng::Deserializer::from_str(text).nth(doc_index)?;
        match Seek(&path[..len]).deserialize(doc) {
            Err(e) if e.to_string().contains(FOUND) => position(&e),
            _ => None,
        }
    })
}

/// Walks down `path`; `Ok(())` means the path is not in the document.
struct Seek<'p>(&'p [Segment]);

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.0.is_empty() {
            deserializer.deserialize_any(Found)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<serde_yaml_ng::Value>()? {
            let matches = matches!((&self.0[0], &key),
                (Segment::Key(want), serde_yaml_ng::Value::String(got)) if want == got);
            if matches {
                map.next_value_seed(Seek(&self.0[1..]))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let found = if self.0[0] == Segment::Index(index) {
                seq.next_element_seed(Seek(&self.0[1..]))?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !found {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!Tag x`): look inside it.
        let (_, variant) = data.variant::<IgnoredAny>()?;
        de::VariantAccess::newtype_variant_seed(variant, self)
    }
}

/// Reached the wanted value: every visit fails with [`FOUND`], stamped with its position.
struct Found;

impl<'de> Visitor<'de> for Found {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_jobs("job.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_file_parses_with_defaults() {
        let specs = parse_jobs(
            "job.yaml",
            "name: train\nreplicas: 2\ngpu: {policy: exclusive, count: 8, models: [H100]}\n",
        )
        .expect("valid");
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].replicas, 2);
        assert_eq!(specs[0].tenant, "default");
    }

    #[test]
    fn validation_errors_point_at_the_fields_value() {
        let text = "name: notebook\nkind: inference\ngpu:\n  policy: shared\n  milli: 1500\n";
        assert_eq!(
            err(text),
            "job.yaml:5:10: gpu.milli: must be between 1 and 1000, got 1500"
        );
    }

    #[test]
    fn flow_style_values_are_found_too() {
        let text = "name: n\ngpu: {policy: shared, milli: 0}\n";
        assert_eq!(
            err(text),
            "job.yaml:2:30: gpu.milli: must be between 1 and 1000, got 0"
        );
    }

    #[test]
    fn list_items_are_found_by_index() {
        let text =
            "name: n\nvolumes:\n  - {name: a, path: /data}\n  - name: b\n    path: relative\n";
        assert_eq!(
            err(text),
            "job.yaml:5:11: volumes[1].path: \"relative\" is not an absolute path"
        );
    }

    #[test]
    fn an_absent_field_points_at_its_parent() {
        let text = "name: n\ngpu:\n  policy: shared\n";
        assert_eq!(
            err(text),
            "job.yaml:3:3: gpu.milli: a shared GPU request needs milli, memory_mib or both"
        );
    }

    #[test]
    fn later_documents_are_located_in_the_whole_file() {
        let text = "name: ok\n---\nname: bad\nreplicas: 0\n";
        assert_eq!(
            err(text),
            "job.yaml:4:11: replicas: must be between 1 and 100000, got 0"
        );
        let two = parse_jobs("j.yaml", "name: a\n---\nname: b\n---\n").expect("valid");
        assert_eq!(
            two.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn serde_errors_keep_their_position_and_field() {
        let text = "name: n\ngpu:\n  policy: shared\n  milly: 5\n";
        let e = err(text);
        assert!(
            e.starts_with("job.yaml:4:3: gpu: unknown field `milly`"),
            "{e}"
        );
        let e = err("name: n\nreplicas: many\n");
        assert!(
            e.starts_with("job.yaml:2:11: replicas: invalid type: string \"many\""),
            "{e}"
        );
        let e = err("name: n\nkind: batch\n");
        assert!(
            e.starts_with("job.yaml:2:7: kind: unknown variant `batch`"),
            "{e}"
        );
    }

    #[test]
    fn broken_yaml_and_empty_files_are_reported() {
        let e = err("name: [unclosed\n");
        assert!(e.starts_with("job.yaml:"), "{e}");
        assert_eq!(err("# nothing\n"), "job.yaml: no job in the file");
        assert_eq!(err(""), "job.yaml: no job in the file");
    }

    #[test]
    fn field_paths_split_into_keys_and_indices() {
        assert_eq!(
            segments("placement.data[0].domain"),
            vec![
                Segment::Key("placement".into()),
                Segment::Key("data".into()),
                Segment::Index(0),
                Segment::Key("domain".into()),
            ]
        );
    }
}
